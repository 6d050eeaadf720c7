from setuptools import find_packages, setup

PACKAGE = "vam_policy"

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(include=[PACKAGE, f"{PACKAGE}.*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="VAM maintainers",
    maintainer_email="vam@example.com",
    description="VAM video-action policy: model core, training path and ROS 2 policy node.",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "vam = vam_policy.cli:main",
            "vam_policy_node = vam_policy.ros.node:main",
            "vam_sim_node = vam_policy.ros.sim_node:main",
        ],
    },
)
