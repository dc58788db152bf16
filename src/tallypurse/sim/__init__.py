"""A deterministic city simulator that drives the real card, terminal and host code with
simulated time and a simulated network, injects faults, and checks the rules of
the system's rules (docs/architecture.md). See docs/simulator.md."""

from .faults import FAULTS, Faults, Rates
from .report import RULES, SimReport, Violation
from .simulator import SimConfig, Simulation, simulate

__all__ = ["FAULTS", "RULES", "Faults", "Rates", "SimConfig", "SimReport", "Simulation",
           "Violation", "simulate"]
