import pathlib
import sys

# dev/local_stack.py deploys the template into moto for these tests and for
# `make demo` alike.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "dev"))
