"""toxjax's configs (ml_collections), loaded by file: `--config=configs/tiny.py`.

`configs/default.py` holds every field with its meaning; the other configs set only what differs
from it (or from the config they build on). Installed with toxjax (`pip install -e .`), so a
config file loaded by path imports its base as `from configs import default` from any directory.
"""
