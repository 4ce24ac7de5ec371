"""Forms 1–5 (CM5–CM9, UM2): what each form says, whether it can be accepted, carrying it out, and
the workflow that takes it from a site up to the province.

The provincial plan refuses forms whose entries are incomplete or wrong ("信息预录入不完整、不正确的
无法处理"), so every rule is written once and used twice: when the form is submitted, and again
when a filed form is applied, because the registry may have moved in between. The package, by
concern:

- :mod:`~registry.forms.payloads` — the shape of each form, every field bounded;
- :mod:`~registry.forms.problems` — a form's problems, each with its row and field;
- :mod:`~registry.forms.facts` — snapshots of the rows a form names, as plain records;
- :mod:`~registry.forms.hardware_checks`, :mod:`~registry.forms.user_checks` — the rules, pure
  functions of a payload and its facts;
- :mod:`~registry.forms.loading` — reading (and at apply time locking) the facts;
- :mod:`~registry.forms.applying` — making a filed form true in the registry;
- :mod:`~registry.forms.records`, :mod:`~registry.forms.workflow` — reading forms, and submitting,
  forwarding, filing, returning, withdrawing and applying them.

This module re-exports what the rest of the system uses, so importers name ``registry.forms``.
"""

from __future__ import annotations

from registry.forms.applying import apply_form1, apply_form3, apply_form4, apply_form5
from registry.forms.facts import (
    CompartmentFact,
    EquipmentFact,
    GatewayFact,
    ProbeFact,
    RegistryFacts,
    RequestFact,
    UnitFact,
    UserFact,
    UserFacts,
    county_of,
    stock_units,
)
from registry.forms.hardware_checks import check_form1, check_form2, check_form3, check_form4, check_registry_form
from registry.forms.loading import load_registry_facts, load_target_user, load_unit, load_user_facts
from registry.forms.payloads import (
    CHANGE_NAMES,
    FORM_ADAPTER,
    FORM_NAMES,
    MAX_ID,
    MODE_NAMES,
    AnyForm,
    Form1,
    Form1Row,
    Form2,
    Form3,
    Form3Row,
    Form4,
    Form4Equipment,
    Form4Probe,
    Form5,
    FormPayload,
    RegistryForm,
    Remark,
    UserFields,
    stored_payload,
)
from registry.forms.problems import Problem, form_invalid
from registry.forms.records import ACTION_NAMES, STATUS_NAMES, FormStatus, form_detail, list_forms
from registry.forms.user_checks import check_form5, form5_refusal

__all__ = [
    "ACTION_NAMES",
    "CHANGE_NAMES",
    "FORM_ADAPTER",
    "FORM_NAMES",
    "MAX_ID",
    "MODE_NAMES",
    "STATUS_NAMES",
    "AnyForm",
    "CompartmentFact",
    "EquipmentFact",
    "Form1",
    "Form1Row",
    "Form2",
    "Form3",
    "Form3Row",
    "Form4",
    "Form4Equipment",
    "Form4Probe",
    "Form5",
    "FormPayload",
    "FormStatus",
    "GatewayFact",
    "ProbeFact",
    "Problem",
    "RegistryFacts",
    "RegistryForm",
    "Remark",
    "RequestFact",
    "UnitFact",
    "UserFact",
    "UserFacts",
    "UserFields",
    "apply_form1",
    "apply_form3",
    "apply_form4",
    "apply_form5",
    "check_form1",
    "check_form2",
    "check_form3",
    "check_form4",
    "check_form5",
    "check_registry_form",
    "county_of",
    "form5_refusal",
    "form_detail",
    "form_invalid",
    "list_forms",
    "load_registry_facts",
    "load_target_user",
    "load_unit",
    "load_user_facts",
    "stock_units",
    "stored_payload",
]
