"""`python -m toxjax.compile`: the compile command (toxjax.compile.compile_main)."""

from toxjax.compile import compile_main

compile_main.run()
