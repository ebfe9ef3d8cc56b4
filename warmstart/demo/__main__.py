"""``python -m warmstart.demo``: the same as ``warmstart demo``."""

import argparse
import sys

from .cli import add_arguments, run

if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m warmstart.demo")
    add_arguments(parser)
    sys.exit(run(parser.parse_args()))
