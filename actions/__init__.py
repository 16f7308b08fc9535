"""Things fleetdeck does to the fleet: orchestrator backends, the load balancer, up/down/status, drain/scale.

Modules are imported explicitly by their users (`from actions.local import LocalOrchestrator`) so that one
backend's optional dependency (e.g. the Docker SDK) never breaks the others.
"""
