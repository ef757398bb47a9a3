"""A deterministic simulator of N consensus cores with fault injection."""

from brokerless.sim.checker import SafetyViolation
from brokerless.sim.network import Faults
from brokerless.sim.simulation import LivenessViolation, SimOptions, Simulation, run_seed

__all__ = ["Faults", "LivenessViolation", "SafetyViolation", "SimOptions", "Simulation", "run_seed"]
