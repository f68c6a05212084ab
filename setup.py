"""Ships the profiles of the top-level ``targets/`` folder inside the wheel, as ``edgeqwen/profiles``.

``targets/`` stays where people look for it in the repository; an installed edgeqwen (not editable)
has no repository around it, so ``edgeqwen.targets`` reads the copy made here.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildPyWithProfiles(build_py):
    def run(self) -> None:
        super().run()
        dst = Path(self.build_lib) / "edgeqwen" / "profiles"
        dst.mkdir(parents=True, exist_ok=True)
        for profile in sorted(Path(__file__).resolve().parent.joinpath("targets").glob("*.toml")):
            shutil.copy2(profile, dst / profile.name)


setup(cmdclass={"build_py": BuildPyWithProfiles})
