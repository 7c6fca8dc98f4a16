"""``python -m vae_helpers.grading.gradescope --root /autograder``: what ``run_autograder``
runs on Gradescope."""

import sys

from vae_helpers.grading.gradescope import main

sys.exit(main())
