"""Build (or reuse) the CPU demo's task data and its two tiny models (explorer < learner), each
warmed up with a short supervised pass through the project's Megatron learner, exported to HF.

    python tools/make_demo_models.py [--cache cache/demo]
"""

import argparse

from megatron_s2l.demo.assets import prepare_demo

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", default="cache/demo", help="output folder (reused when current)")
    print(prepare_demo(parser.parse_args().cache))
