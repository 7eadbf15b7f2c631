"""toxjax's configs (ml_collections), loaded by file: `--config=toxjax/configs/tiny.py`.

`default.py` holds every field with its meaning; the other configs set only what differs from it
(or from the config they build on). They are part of the installed package, so a config file
loaded by path imports its base as `from toxjax.configs import default` from any directory.
"""
