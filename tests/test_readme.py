"""The README's API tour runs as written."""
import os
import re

README = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "README.md")


def test_readme_tour_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = re.findall(r"```python\n(.*?)```", open(README).read(), re.S)[0]
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert scope["idx"].shape == (10_000, 2)
    assert (tmp_path / "umatrix.png").exists() and (tmp_path / "som.pt").exists()
