import sys

from .commands import main

sys.exit(main(["bench", *sys.argv[1:]]))
