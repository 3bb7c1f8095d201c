"""`python -m psp_deploy.cli`: the same command as `psp-deploy`."""

from . import main

main()
