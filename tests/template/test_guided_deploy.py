"""How many questions `sam deploy --guided` asks for each template, counted
by running the installed SAM CLI's own `sam deploy --guided` command (in
process, through click) with its prompts answered by their defaults, up to
where SAM would go online to find its deployment bucket. A question is a prompt for a value;
SAM's own confirmations are counted apart, as the issue counting them
allows: its yes/no questions (changeset, IAM roles, rollback, saving) and
the file and environment to save the answers in, asked only after "Save
arguments to configuration file"."""

import pathlib

import pytest
from click.testing import CliRunner
from samcli.cli.main import cli
from samcli.commands.deploy import guided_context

ROOT = pathlib.Path(__file__).resolve().parents[2]

# Stack name and region, then one per parameter.
MOST_QUESTIONS = {"template.yaml": 8, "kafka/template.yaml": 10}
# Where to save the answers: SAM's follow-ups to its own confirmation.
SAVING = ["SAM configuration file", "SAM configuration environment"]


class _Online(Exception):
    """SAM reached the point where it calls AWS: every question is asked."""


def guided_questions(template, monkeypatch):
    questions, confirmations, reached = [], [], []

    def prompt(text, default=None, **_):
        questions.append(text.replace("\033[1m", "").replace("\033[0m", "").strip())
        return default if default is not None else ""

    def confirm(text, default=False, **_):
        confirmations.append(text)
        return default

    def online(**_):
        reached.append(True)
        raise _Online()

    monkeypatch.setattr(guided_context, "prompt", prompt)
    monkeypatch.setattr(guided_context, "confirm", confirm)
    monkeypatch.setattr(guided_context, "manage_stack", online)
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("SAM_CLI_TELEMETRY", "0")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    result = CliRunner().invoke(
        cli, ["deploy", "--guided", "--template-file", str(ROOT / template)], catch_exceptions=True
    )
    # SAM reports the stop as an unexpected error; what matters is where.
    assert reached, result.output
    return questions, confirmations


@pytest.mark.parametrize("template", MOST_QUESTIONS)
def test_the_guided_deploy_asks_only_what_a_deployer_must_decide(template, monkeypatch):
    prompts, confirmations = guided_questions(template, monkeypatch)
    assert prompts[-2:] == SAVING, prompts
    assert any("Save arguments" in c for c in confirmations), confirmations
    questions = prompts[:-2]
    assert questions[:2] == ["Stack Name", "AWS Region"], questions
    assert len(questions) <= MOST_QUESTIONS[template], questions
    assert confirmations, "SAM's confirmations were reached"
    assert any(q.endswith("Parameter Settings") for q in questions), questions


def test_the_count_is_of_the_template_asked(monkeypatch, tmp_path):
    """The same count over a template with one parameter more asks one
    question more: the counter counts parameters, not a fixed list."""
    text = (ROOT / "template.yaml").read_text()
    widened = text.replace(
        "\nParameters:\n",
        "\nParameters:\n  OneMore:\n    Type: String\n    Default: x\n",
        1,
    )
    (tmp_path / "template.yaml").write_text(widened)
    (tmp_path / "src").mkdir()
    baseline, _ = guided_questions("template.yaml", monkeypatch)
    wider, _ = guided_questions(str(tmp_path / "template.yaml"), monkeypatch)
    assert len(wider) == len(baseline) + 1
