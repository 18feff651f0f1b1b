"""The method comparison: zero-shot, 10-shot ICL, layer patching, function vector, REINFORCE and
soft task vector on a set of tasks (default: the built-in suite, default model).

    python scripts/compare_methods.py [--tasks antonym,country_capital | DIR] [--model NAME] [--out results/compare]

The same as `tvjax compare` (every flag: --help): writes `<out>/compare.md` (scores and
seconds tables), `compare.json`, `compare.png` and one `tasks/<task>.json` per task,
reused on a rerun (`--redo` recomputes), so a long run can be continued or extended.
"""

import sys

from tvjax.cli import main

if __name__ == "__main__":
    sys.exit(main(["compare", *sys.argv[1:]]))
