"""``python -m timm_wae_cli``: the ``timm-wae`` command."""
import sys

from . import main

sys.exit(main())
