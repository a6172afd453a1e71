"""`import gradcam` imports no framework (checked in a fresh interpreter through sys.modules)."""
import subprocess
import sys

FRAMEWORKS = ["torch", "tensorflow", "keras", "jax", "flax"]


def modules_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print(' '.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    return set(out.split())


def test_import_gradcam_imports_no_framework():
    loaded = modules_after("import gradcam, gradcam.reference")
    assert not {m.split(".")[0] for m in loaded} & set(FRAMEWORKS)


def test_reference_imports_no_framework_and_no_backend():
    loaded = modules_after("import gradcam.reference")
    assert not {m.split(".")[0] for m in loaded} & set(FRAMEWORKS)
    assert not {"gradcam.backends.torch", "gradcam.backends.tensorflow", "gradcam.backends.jax"} & loaded
