"""Analysis layer of symbreak: what broken rotational symmetry does to observables.

Reads i-PI outputs (properties, xyz / extended-xyz trajectories, extras), LAMMPS dumps
and any ASE-readable trajectory, and computes, with block-averaged error bars:

==================  =====================================================================
module              concept
==================  =====================================================================
``io``              readers (:func:`~.io.read_properties`, :func:`~.io.read_ipi_xyz`,
                    :func:`~.io.read_extras`, :func:`~.io.load_trajectory`)
``units``           analysis units (Å, ps, eV, amu) and i-PI unit labels
``stats``           :func:`~.stats.block_average`, :func:`~.stats.linear_fit`
``molecules``       water molecules by distance, COM, bisector, unwrapping; the
                    chemistry of a frame (intact, ions, H2) and atoms near its defects
``angular``         L(t) about the COM, its drift; torque τ = Σ (x − x_com) × F
``spectrum``        power spectra (Welch / periodogram, THz or cm⁻¹)
``orientation``     lab-frame F(cos θ, φ) of the dipole direction in k_B T
``rdf``             g_AB(r) and coordination numbers
``dipoles``         distance-resolved dipole correlations C, C_L, C_T, h_Δ, h_D, G_K
``diffusion``       MSD of molecular centres of mass and D
``reorientation``   C_1(t) = ⟨u(0)·u(t)⟩
``drift``           conserved-quantity drift (eV/molecule/ps)
``components``      averaged − plain energies and forces along a run
``ice``             relative energies of structures, plain vs averaged
``report``          JSON summaries and PNG figures (Agg)
``cli``             ``symbreak probe <analysis>``
==================  =====================================================================

Submodules are imported on demand (``from symbreak.analysis import rdf``), so this
package imports neither matplotlib nor i-PI.
"""

from .stats import block_average, linear_fit

__all__ = ["block_average", "linear_fit"]
