"""The whole pipeline on the built-in synthetic faces (what `make demo` runs).

    python jobs/demo.py                 # ~15 min on 2 CPU cores
    python jobs/demo.py --preset tiny   # a minute or two: the CI smoke version
"""

import sys

from landmarks.cli import main

if __name__ == "__main__":
    sys.exit(main("demo", __doc__))
