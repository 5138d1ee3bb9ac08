"""The Hopfield family's public ops: one face over its two op stacks (docs/design.md,
"Names and places"). Classical recall, storing and energy are ``recall_ops.py`` /
``recall_reference.py`` / ``recall_triton.py``; continuous (modern) retrieval is
``retrieval_ops.py`` / ``retrieval_reference.py`` / ``retrieval_triton.py``. Importing this
module declares every op of the family (what ``registry.load_families`` relies on)."""
from .recall_ops import hopfield_energy, hopfield_recall, hopfield_store
from .retrieval_ops import hopfield_retrieval

__all__ = ["hopfield_energy", "hopfield_recall", "hopfield_retrieval", "hopfield_store"]
