"""`python -m bench`: the performance benchmark, bench_pipeline (see its --help); the others run
by name (bench_model, bench_detector, bench_reliability, nab, bench_faults, bench_sim)."""

import sys

from bench.bench_pipeline import main

sys.exit(main())
