"""gradcam: the Grad-CAM family for PyTorch, TensorFlow/Keras and JAX, with the math in plain NumPy."""
__version__ = "0.1.0"
