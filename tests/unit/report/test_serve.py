"""The report server's addresses and the answers it gives without a report to read (the served
report itself: tests/pipeline/test_report_server.py)."""

import pytest

from pretrace.config import PretraceConfig
from pretrace.errors import InputError
from pretrace.report.serve import DEFAULT_REPORT_PORT, REPORT_PORT_ENV, ReportSite, report_port, report_url

COMPARED = PretraceConfig(corpus="no-such-folder", compare_models={"b": {"model": "elsewhere"}})


def test_the_port_comes_from_the_environment_and_is_not_dagsters():
    assert report_port({}) == DEFAULT_REPORT_PORT != 3000
    assert report_port({REPORT_PORT_ENV: "4100"}) == 4100
    for bad in ("http", "0", "70000"):
        with pytest.raises(InputError, match=REPORT_PORT_ENV):
            report_port({REPORT_PORT_ENV: bad})


def test_links_name_this_machine_and_quote_names():
    assert report_url(port=4100) == "http://127.0.0.1:4100/report.html"
    assert report_url("figures/a b.png", "model b", 4100) == "http://127.0.0.1:4100/models/model%20b/figures/a%20b.png"


@pytest.mark.parametrize(
    "path, location",
    [
        ("/", "/report.html"),
        ("/?x=1", "/report.html"),
        ("/models/b", "/models/b/report.html"),
        ("/models/b/", "/models/b/report.html"),
    ],
)
def test_a_folder_leads_to_its_report_page(path, location):
    answer = ReportSite(COMPARED).answer(path)
    assert (answer.status, answer.headers["Location"]) == (302, location)


def test_an_unknown_model_is_not_found():
    assert ReportSite(COMPARED).answer("/models/c/report.html").status == 404


def test_an_unreadable_project_gets_a_page_naming_the_problem_and_the_command():
    answer = ReportSite(COMPARED, rerun="pretrace run --config x.yaml").answer("/report.html")
    assert answer.status == 409 and answer.content_type == "text/html; charset=utf-8"
    assert b"no-such-folder" in answer.body and b"pretrace run --config x.yaml" in answer.body
    assert b"Traceback" not in answer.body
