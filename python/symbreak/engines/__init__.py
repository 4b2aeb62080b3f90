"""Adapters between the evaluator and MD engines (i-PI, ASE, LAMMPS): units, cells, protocol."""
