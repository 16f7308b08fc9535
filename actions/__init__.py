"""Things fleetdeck does to the fleet: the operations (scale, drain, restart, limits) with their guard rails
(`auth.py`, `audit.py`), `fleetdeck up/down/status` (`fleet.py`), the orchestrator and load-balancer backends
(`backends/`) and, later in this restructure, the proving tools (load, scaling, readiness).

Modules are imported explicitly by their users (`from actions.backends.local import LocalOrchestrator`) so that
one backend's optional dependency (e.g. the Docker SDK) never breaks the others.
"""
