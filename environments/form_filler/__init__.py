"""Form filling: business forms, an environment that fills them in, a simulated user, scoring,
and the teacher, expert and student assistants of the case study (docs/form-filler.md).

Example:
    >>> import asyncio
    >>> from tapeagents.environments.form_filler import expert_agent, get_form, make_goal
    >>> from tapeagents.environments.form_filler import run_dialogue
    >>> goal = make_goal(get_form("buy_gift_card"), "invalid_value")
    >>> dialogue = asyncio.run(run_dialogue(expert_agent(), goal))
    >>> dialogue.score.correct, dialogue.score.validation_errors
    (True, 1)
"""

from .agents import (
    CompactNode,
    ExpertNode,
    compact_messages,
    expert_action,
    expert_agent,
    student_agent,
    teacher_agent,
)
from .catalog import (
    Company,
    FieldSpec,
    Form,
    companies,
    forms,
    get_company,
    get_form,
    search_forms,
)
from .dialogue import Dialogue, evaluate, run_dialogue, user_view
from .environment import (
    FormFillerEnvironment,
    FormState,
    form_state,
)
from .scoring import (
    DialogueScore,
    apply_score,
    score_dialogue,
    summarize,
)
from .simulator import (
    BEHAVIOURS,
    Behaviour,
    UserGoal,
    llm_user,
    make_goal,
    make_goals,
    scripted_user,
    user_instructions,
)
from .steps import (
    ASSISTANT_ACTIONS,
    AskUser,
    ConfirmForm,
    FieldInvalid,
    FieldSet,
    FieldSkipped,
    FindForm,
    FormCandidates,
    FormError,
    FormOpened,
    FormSubmitted,
    OpenForm,
    SetField,
    SkipField,
    SubmissionRefused,
    SubmitForm,
)
from .validation import FieldError, check_value

__all__ = [
    "ASSISTANT_ACTIONS",
    "BEHAVIOURS",
    "AskUser",
    "Behaviour",
    "Company",
    "CompactNode",
    "ConfirmForm",
    "Dialogue",
    "DialogueScore",
    "ExpertNode",
    "FieldError",
    "FieldInvalid",
    "FieldSet",
    "FieldSkipped",
    "FieldSpec",
    "FindForm",
    "Form",
    "FormCandidates",
    "FormError",
    "FormFillerEnvironment",
    "FormOpened",
    "FormState",
    "FormSubmitted",
    "OpenForm",
    "SetField",
    "SkipField",
    "SubmissionRefused",
    "SubmitForm",
    "UserGoal",
    "apply_score",
    "check_value",
    "compact_messages",
    "companies",
    "evaluate",
    "expert_action",
    "expert_agent",
    "form_state",
    "forms",
    "get_company",
    "get_form",
    "llm_user",
    "make_goal",
    "make_goals",
    "run_dialogue",
    "score_dialogue",
    "scripted_user",
    "search_forms",
    "student_agent",
    "summarize",
    "teacher_agent",
    "user_instructions",
    "user_view",
]
