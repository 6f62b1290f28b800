"""Makes `import s1mmalign` work from a checkout; on a cluster the --py-files zip provides it."""

import os
import sys

try:
    import s1mmalign  # noqa: F401
except ImportError:
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "lib"))
