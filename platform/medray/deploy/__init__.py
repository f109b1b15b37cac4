"""Production deployment helpers: KubeRay manifest rendering and validation, version agreement.

``python -m medray.deploy.kuberay`` renders ``k8s/rayservice.prod.yaml`` from the Serve config and
checks or validates the manifests; ``python -m medray.deploy.versions`` checks that the Ray image
tag, Ray and Python versions agree across the Dockerfile, ``k8s/`` and the Python pins.
"""
