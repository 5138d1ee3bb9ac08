"""The masked autoregressive family: masked convolutions and linear layers, PixelCNN and MADE."""
