"""Tools around a cluster: load generation, the history checker, local clusters, data dirs."""
