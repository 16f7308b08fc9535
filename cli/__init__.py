"""The `fleetdeck` command line: a thin layer over actions/ and collectors/."""
