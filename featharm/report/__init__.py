"""One-file HTML reports of a harmonization: :func:`make_report` and :class:`HTMLReport`.

The report is a single HTML document (jinja2 template with autoescape, CSS inline, figures embedded as
base64 SVG or PNG) that opens without network access. Fitted models have a shortcut,
``model.report(X, covariates)``; the command line has ``featharm report`` and
``featharm harmonize ... --report FILE``.

>>> import featharm as fh
>>> data = fh.datasets.load_ixi()
>>> X = data[fh.datasets.ixi_feature_columns(data)]
>>> hm = fh.ComBat(batch="site", formula="age + sex").fit(X, data)
>>> rep = hm.report(X, data)                           # doctest: +SKIP
>>> rep.save_as_html("report.html")                    # doctest: +SKIP
"""

from ._build import HTMLReport, make_report
from ._methods import FAMILY_METHODS, REFERENCES, methods_references, methods_text, register_family

__all__ = ["make_report", "HTMLReport", "methods_text", "methods_references", "FAMILY_METHODS", "REFERENCES",
           "register_family"]
