"""``fedssl audit``: independent checks of a run's privacy claims.

:mod:`~fedssl.privacy.audit.auditor` runs the audit and writes its report; it verifies the
signed ledgers and the configuration (:mod:`~fedssl.privacy.audit.checks`), recomputes every
epsilon with independent accountants (:mod:`~fedssl.privacy.audit.accounting`), collects the
findings (:mod:`~fedssl.privacy.audit.findings`), writes ``report.md`` and the plot
(:mod:`~fedssl.privacy.audit.report`), and optionally runs the one-run canary audit
(:mod:`~fedssl.privacy.audit.empirical`; Steinke, Nasr & Jagielski 2023).
"""
