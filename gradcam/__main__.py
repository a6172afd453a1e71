"""``python -m gradcam``: the same as the ``gradcam`` command."""
import sys

from gradcam.cli import main

sys.exit(main())
