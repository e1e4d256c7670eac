"""snakemaps: a Snakemake workflow that writes ClinicaDL-style MAPS directories.

The package is split by stage (``maps``, ``data``, ``split``, ``models``,
``train``, ``evaluate``, ``search``, ``env``, ``report``). Importing the
package itself is cheap: nothing here imports torch, so steps that need no
torch (split, analysis, summaries) start fast.
"""

__version__ = "0.1.0"
