"""KFP components: thin lightweight-Python adapters around the pipeline steps beside them (:mod:`.steps`).

Every component runs in the project's platform image (built from the top-level Dockerfile), which holds
the locked dependencies and this package, so nothing is pip-installed at run time
(``install_kfp_package=False``, no ``packages_to_install``). Imports live inside the function bodies
because KFP ships each lightweight component as the source of that one function.
"""

# The platform image every component runs in on a cluster (kfp.local ignores it and uses this
# interpreter). Built from the top-level Dockerfile; it cannot be built on the development machines.
PLATFORM_IMAGE = "ghcr.io/learning-machine/platform:0.1.0"
