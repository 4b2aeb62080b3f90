"""``symbreak reproduce``: rerun the study's experiments with the shipped model.

Langer, Pozdnyakov, Ceriotti, Mach. Learn.: Sci. Technol. 5, 04LT01 (2024): single
molecule NVE (angular momentum, torque against the grid size) and NVT (orientation free
energy), liquid water (plain, MTS-averaged, random rotation), ice Ih relative energies,
and, beyond the study, path-integral MD. The runs go through the i-PI launcher
(:mod:`symbreak.engines.launcher`) and the ASE calculator, the analyses through
:mod:`symbreak.analysis`; the report (markdown, PNGs, JSON) compares our numbers with the
study's.

==================  ==================================================================
module              concept
==================  ==================================================================
``experiments``     the registry of experiments; runs one, records its outcome
``context``         settings (quick / full), the run context, shared run analyses
``gas_phase``       1. molecule NVE (angular momentum, torque), 2. molecule NVT
``condensed``       3. liquid, 4. ice Ih, 5. PIMD
``inputs``          the shipped i-PI inputs edited per run; one launcher call per run
``report``          tables (ours next to the study's), markdown, comparison plots
``cli``             ``symbreak reproduce [--quick] [--out DIR] [--threads N]``
==================  ==================================================================
"""
