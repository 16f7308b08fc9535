"""The "prove" pillar: load generation (`loadgen/`), the scaling test (`scaling.py` with the Universal
Scalability Law fit in `usl.py`), the readiness scorecard (`readiness.py` measures, `scorecard.py` scores,
`report.py` exports) and the background test runs the CLI and the dashboard start (`testruns.py`)."""
