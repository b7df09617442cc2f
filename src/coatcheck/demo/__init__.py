"""The reference app: a small FastAPI site that shows coatcheck's sessions at work.

Run it with ``coatcheck demo``. Nothing is imported here, so the CLI can read the
demo's settings without pulling in FastAPI; the app itself is
:func:`coatcheck.demo.app.create_app`.
"""

from __future__ import annotations
