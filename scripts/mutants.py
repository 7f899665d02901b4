#!/usr/bin/env python3
"""Plausible one-line bugs in the safety code, each of which some test must catch.

Each mutant is applied to a copy of the repository (never to the working tree), then the
tests that guard that rule run against the copy (PYTHONPATH points subprocesses at it too).
A mutant is "killed" when those tests fail. Prints one line per mutant and exits 1 if any
survived.

Run: .venv/bin/python scripts/mutants.py [--baseline] [NAME-SUBSTRING ...]
(--baseline runs each mutant's tests on the unmutated copy: they must all pass.)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Mutant:
    name: str
    path: str
    edits: list[tuple[str, str]]  # (old, new), each old must occur exactly once
    tests: list[str]


MUTANTS = [
    # -- the ten the issue lists -----------------------------------------------------------------
    Mutant(
        "extend allows a few minutes past the hard maximum",
        "gpushopper/core/rules.py",
        [("    if new_end <= hard:\n", "    if new_end <= hard + timedelta(minutes=5):\n")],
        [
            "tests/test_provision.py::test_extend_is_allowed_to_the_hard_maximum_exactly_and_not_a_second_past"
        ],
    ),
    Mutant(
        "a pass skips every action when one provider fails to list",
        "gpushopper/core/enforcer.py",
        [
            (
                "            return report\n        for outcome in self.execute_all(",
                "            return report\n        if report.provider_errors:\n            return report\n        for outcome in self.execute_all(",
            )
        ],
        ["tests/test_enforcer.py", "tests/test_watch_loop.py"],
    ),
    Mutant(
        "end_session swallows a failed destroy and marks the session ended",
        "gpushopper/core/teardown.py",
        [
            (
                '            self.write(error=f"destroy failed: {exc}")\n            raise\n',
                '            self.write(error=f"destroy failed: {exc}")\n',
            )
        ],
        ["tests/test_teardown.py"],
    ),
    Mutant(
        "destroy_and_confirm returns while the instance still exists",
        "gpushopper/core/teardown.py",
        [
            (
                "        if instance is None:\n            return True\n",
                '        if instance is None or instance.status != "running":\n            return True\n',
            )
        ],
        ["tests/test_teardown.py"],
    ),
    Mutant(
        "the label lookup after a failed create tries once",
        "gpushopper/core/teardown.py",
        [("    timeout_s: float = LABEL_WAIT_S,\n", "    timeout_s: float = 0.0,\n")],
        ["tests/test_teardown.py", "tests/test_provisioner_faults.py"],
    ),
    Mutant(
        "watch reaps instances labelled by another install",
        "gpushopper/core/lifecycle.py",
        [
            (
                "    if policy.install_id is None or install != policy.install_id:\n",
                "    if policy.install_id is None:\n",
            )
        ],
        ["tests/test_enforcer.py", "tests/test_watch_loop.py"],
    ),
    Mutant(
        "billing starts when the instance is ready, not when the provider charges",
        "gpushopper/core/provisioner.py",
        [
            ("            billing_started_at=self.clock(),\n", ""),
            (
                "            ready_at=ready,\n",
                "            ready_at=ready,\n            billing_started_at=ready,\n",
            ),
        ],
        ["tests/test_provisioner_faults.py"],
    ),
    Mutant(
        "update_session reads and writes in separate transactions",
        "gpushopper/state/store.py",
        [
            (
                "            session = self._typed(session_id, record)\n"
                "            session.set(**decide(session))\n",
                "            session = self._typed(session_id, record)\n"
                "        session.set(**decide(session))\n"
                "        with self.transaction() as state:\n",
            )
        ],
        [
            "tests/test_store.py",
            "tests/test_request.py::test_two_extends_at_once_each_keep_their_time_and_their_override",
        ],
    ),
    Mutant(
        "redact replaces only the first occurrence",
        "gpushopper/model/redact.py",
        [
            (
                '.lower(), "****"), text\n    )',
                '.lower(), "****"), text, count=1\n    )',
            )
        ],
        ["tests/test_redact.py", "tests/test_journal.py"],
    ),
    Mutant(
        "the journal writes without redaction",
        "gpushopper/core/journal.py",
        [
            (
                '    line = json.dumps(redact_tree(plain), sort_keys=True) + "\\n"',
                '    line = json.dumps(plain, sort_keys=True) + "\\n"',
            )
        ],
        ["tests/test_journal.py"],
    ),
    # -- the rest of the safety rules ----------------------------------------------------------------
    Mutant(
        "the owner check never finds an owner gone",
        "gpushopper/core/enforcer.py",
        [
            (
                'owner_state(session.rest.get("owner")) == GONE',
                'owner_state(session.rest.get("owner")) == "never"',
            )
        ],
        ["tests/test_enforcer.py"],
    ),
    Mutant(
        "a Vast.ai listing of {} reads as no instances",
        "gpushopper/providers/vastai.py",
        [
            (
                '            rows = data.get("instances") if isinstance(data, dict) else None\n',
                '            rows = (data.get("instances") if isinstance(data, dict) else None) or []\n',
            )
        ],
        ["tests/test_providers_vastai.py"],
    ),
    Mutant(
        "a TensorDock listing of {} reads as no instances",
        "gpushopper/providers/tensordock.py",
        [
            (
                "    if not isinstance(rows, list):\n        shown",
                "    rows = rows or []\n    if not isinstance(rows, list):\n        shown",
            )
        ],
        ["tests/test_providers_tensordock.py"],
    ),
    Mutant(
        "an offer or template answer without its list reads as none",
        "gpushopper/providers/common.py",
        [
            (
                "    rows = data.get(key) if isinstance(data, dict) else None\n",
                "    rows = (data.get(key) if isinstance(data, dict) else None) or []\n",
            )
        ],
        [
            "tests/test_providers_vastai.py::test_an_offer_or_template_answer_without_its_list_is_an_error_not_none"
        ],
    ),
    Mutant(
        "a TensorDock offer lookup adopts another hostnode's answer",
        "gpushopper/providers/tensordock.py",
        [("        if str(found) != hostnode_id:", "        if False:")],
        [
            "tests/test_providers_tensordock.py::test_get_offer_answered_with_another_hostnode_is_refused"
        ],
    ),
    Mutant(
        "a log's result_url may be plain http on loopback with the real API",
        "gpushopper/providers/vastai.py",
        [
            (
                'parts.scheme == "http" and _is_loopback(host) and _is_loopback(urlsplit(api_base).hostname)',
                'parts.scheme == "http" and _is_loopback(host)',
            )
        ],
        ["tests/test_sessions_logs.py"],
    ),
    Mutant(
        "a log's result_url is polled past the time bound",
        "gpushopper/providers/vastai.py",
        [
            (
                "not only the download.\n                if time.monotonic() - started > LOG_FETCH_MAX_S:",
                "not only the download.\n                if False:",
            )
        ],
        ["tests/test_sessions_logs.py::test_slow_polling_is_bounded_in_time_not_only_in_tries"],
    ),
    Mutant(
        "templates catalog asks a failed provider again for each template",
        "gpushopper/core/catalog.py",
        [("([], {}) if provider in errors else search(asked)", "search(asked)")],
        ["tests/test_catalog.py::test_a_failing_provider_is_reported_and_the_other_still_listed"],
    ),
    # -- the providers' configs and HTTP client (issue 11) ----------------------------------------
    Mutant(
        "a provider config's repr shows its key",
        "gpushopper/providers/vastai.py",
        [("    api_key: str = field(repr=False)\n", "    api_key: str = field()\n")],
        ["tests/test_registry.py"],
    ),
    Mutant(
        "a provider client leaves its key out of the redaction",
        "gpushopper/providers/tensordock.py",
        [("            secrets=[config.api_token],\n", "            secrets=[],\n")],
        ["tests/test_registry.py"],
    ),
    Mutant(
        "an idempotent call is tried only once",
        "gpushopper/providers/base.py",
        [("attempts = self.max_attempts if idempotent else 1", "attempts = 1")],
        ["tests/test_http.py"],
    ),
    Mutant(
        "a 503 is not retried",
        "gpushopper/providers/base.py",
        [("frozenset({429, 502, 503, 504})", "frozenset({429, 502, 504})")],
        ["tests/test_http.py"],
    ),
    Mutant(
        "a hostnode without a dedicated IP is offered",
        "gpushopper/providers/tensordock.py",
        [
            (
                '.get("has_public_ip_available") is not False\n',
                '.get("has_public_ip_available") is not None or True\n',
            )
        ],
        ["tests/test_providers_tensordock.py"],
    ),
    Mutant(
        "a session missing from a list is closed without asking the provider",
        "gpushopper/core/enforcer.py",
        [("                if self._confirmed_gone(action):\n", "                if True:\n")],
        ["tests/test_enforcer.py", "tests/test_watch_loop.py"],
    ),
    Mutant(
        "an orphan is destroyed without checking its label",
        "gpushopper/core/enforcer.py",
        [
            (
                "                    action.instance_id,\n                    label=action.label,\n",
                "                    action.instance_id,\n",
            )
        ],
        ["tests/test_enforcer.py"],
    ),
    Mutant(
        "any session id shape passes for ours",
        "gpushopper/model/session.py",
        [
            (
                '_LABEL_RE = re.compile(r"gpu-shopper:([0-9a-f]{8}):([0-9a-f]{6})")',
                '_LABEL_RE = re.compile(r"gpu-shopper:([^:]+):([^:]+)")',
            )
        ],
        ["tests/test_lifecycle.py"],
    ),
    Mutant(
        "a second signal cuts the cleanup short",
        "gpushopper/core/interrupts.py",
        [("    if _guard.raised or _guard.deferring:\n", "    if _guard.deferring:\n")],
        ["tests/test_interrupts.py", "tests/test_provisioner_faults.py"],
    ),
    Mutant(
        "a signal during a failed boot's destroy interrupts it",
        "gpushopper/core/interrupts.py",
        [("    if _guard.raised or _guard.deferring:\n", "    if _guard.raised:\n")],
        ["tests/test_interrupts.py", "tests/test_provisioner_faults.py"],
    ),
    Mutant(
        "a deferred block that fails spends the signal held meanwhile",
        "gpushopper/core/interrupts.py",
        [
            (
                "            if finished and held and not _guard.deferring:\n",
                "            if held and not _guard.deferring:\n",
            )
        ],
        ["tests/test_interrupts.py"],
    ),
    Mutant(
        "SIGHUP is not handled",
        "gpushopper/core/interrupts.py",
        [
            (
                "HANDLED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)",
                "HANDLED = (signal.SIGINT, signal.SIGTERM)",
            )
        ],
        ["tests/test_interrupts.py"],
    ),
    Mutant(
        "a closed pipe mid-boot counts as a failed boot",
        "gpushopper/core/provisioner.py",
        [
            (
                "        except OSError as exc:\n            interrupts.output_lost(exc)\n",
                "        except OSError:\n            raise\n",
            )
        ],
        ["tests/test_provisioner_faults.py"],
    ),
    Mutant(
        "a full disk before the destroy stops it",
        "gpushopper/core/teardown.py",
        [
            (
                "        except StateWriteError as exc:\n            self.write_error = exc\n\n",
                "        except StateWriteError:\n            raise\n\n",
            )
        ],
        ["tests/test_teardown.py"],
    ),
    Mutant(
        "cleanup-orphans says all clear while foreign labels run",
        "gpushopper/core/cleanup.py",
        [
            (
                '        return [r for r in self.rows if r["action"] == "left"]\n',
                '        return [r for r in self.rows if r["action"] == "left" and r["reason"] != "foreign"]\n',
            )
        ],
        [
            "tests/test_watch.py::test_cleanup_orphans_works_with_no_state_file",
            "tests/test_cleanup.py::test_another_installs_instance_is_never_destroyed_and_never_all_clear",
        ],
    ),
    Mutant(
        "watch --once says all clear when blind",
        "gpushopper/core/watcher.py",
        [("    return 0 if ok else 1\n", "    return 0\n")],
        ["tests/test_accidents.py::test_item5_watch_once_exits_1_when_a_provider_cannot_be_listed"],
    ),
    Mutant(
        "a huge recorded boot timeout switches the stuck-boot sweep off",
        "gpushopper/core/lifecycle.py",
        [
            (
                "min(float(chosen), policy.hard_max_s)",
                "float(chosen)",
            )
        ],
        ["tests/test_lifecycle.py"],
    ),
    Mutant(
        "one provider's adapter bug stops every provider's expiries",
        "gpushopper/core/enforcer.py",
        [
            (
                "            except Exception as exc:  # an adapter's bug must not blind",
                "            except ZeroDivisionError as exc:  # an adapter's bug must not blind",
            )
        ],
        ["tests/test_enforcer.py"],
    ),
    Mutant(
        "the owner check reads a pid from another pid namespace as gone",
        "gpushopper/core/owner.py",
        [
            (
                "        return UNKNOWN  # its pid means nothing here",
                "        pass  # its pid means nothing here",
            )
        ],
        ["tests/test_owner.py"],
    ),
    Mutant(
        "a boot carries on over a session another process is ending",
        "gpushopper/core/provisioner.py",
        [
            (
                "            if session is None or not session.booting:",
                "            if session is None:",
            )
        ],
        ["tests/test_provisioner_faults.py"],
    ),
    Mutant(
        "a boot brings back a session watch closed failed",
        "gpushopper/core/provisioner.py",
        [
            (
                "            if session is None or not session.booting:",
                '            if session is None or session.status in ("ending", "ended"):',
            )
        ],
        ["tests/test_provisioner_faults.py"],
    ),
    Mutant(
        "watch closes a session on a plan the session has moved past",
        "gpushopper/core/enforcer.py",
        [
            (
                "            if not session.live or session.instance != action.instance_id:\n",
                "            if not session.live:\n",
            )
        ],
        ["tests/test_enforcer.py"],
    ),
    Mutant(
        "a hand-off that crashes leaves the new session running",
        "gpushopper/core/request.py",
        [
            (
                "    except Exception as exc:  # a bug printing it: nobody has the SSH details\n",
                "    except ZeroDivisionError as exc:\n",
            )
        ],
        ["tests/test_request.py"],
    ),
    Mutant(
        "an orphan that carries no label passes for ours",
        "gpushopper/core/enforcer.py",
        [
            (
                "                    label=action.label,\n                    runtime=self.runtime,",
                "                    label=action.label,\n                    allow_unlabelled=True,\n"
                "                    runtime=self.runtime,",
            )
        ],
        ["tests/test_enforcer.py"],
    ),
    Mutant(
        "a destroy the state cannot record counts as recorded",
        "gpushopper/core/enforcer.py",
        [('FAILED = ("failed", "unrecorded")', 'FAILED = ("failed",)')],
        ["tests/test_enforcer.py"],
    ),
    Mutant(
        "a bare number is hours again",
        "gpushopper/model/units.py",
        [
            (
                '        if bare_unit is None:\n            raise ValueError(f"{raw!r} has no unit; {UNIT_HINT}")\n',
                '        if bare_unit is None:\n            bare_unit = "h"\n',
            )
        ],
        ["tests/test_durations.py"],
    ),
    # -- benchmark run (issue 13) ------------------------------------------------------------------
    Mutant(
        "benchmark budget forgets the money running entries have committed",
        "gpushopper/core/bench/runner.py",
        [
            (
                "    return spent + committed + commitment <= max_budget + 1e-9\n",
                "    return spent + commitment <= max_budget + 1e-9\n",
            )
        ],
        [
            "tests/test_bench_run.py::test_parallel_entries_wait_for_the_money_a_running_one_has_committed"
        ],
    ),
    Mutant(
        "benchmark budget checks only what was spent, not the new entry's commitment",
        "gpushopper/core/bench/runner.py",
        [
            (
                "    return spent + committed + commitment <= max_budget + 1e-9\n",
                "    return spent + committed <= max_budget + 1e-9\n",
            )
        ],
        ["tests/test_bench_run.py::test_a_budget_that_allows_one_entry_never_starts_the_second"],
    ),
    Mutant(
        "benchmark commits $0 for an offer whose price the provider did not send",
        "gpushopper/core/bench/runner.py",
        [("        return math.inf\n", "        return 0.0\n")],
        ["tests/test_bench_run.py::test_an_offer_without_a_price_is_never_rented_under_a_budget"],
    ),
    Mutant(
        "benchmark store refuses a backend text the workload's result may hold",
        "gpushopper/core/bench/records.py",
        [("MAX_BACKEND = 80 ", "MAX_BACKEND = 40 ")],
        [
            "tests/test_bench_workloads.py::test_llm_throughput_through_benchmark_run_with_dollars_per_million_tokens"
        ],
    ),
    Mutant(
        "a bug mid-job skips the job's teardown (the instance runs on to its deadline)",
        "gpushopper/core/jobs.py",
        [
            (
                "            self._finish(spec, job_id, session, outcome, ssh_worked, started)\n"
                "            raise\n",
                "            raise\n",
            )
        ],
        ["tests/test_bench_run.py::test_a_bug_mid_job_still_destroys_the_instance_and_pays_for_it"],
    ),
    Mutant(
        "benchmark leaves a crashed attempt's cost out of the budget",
        "gpushopper/core/bench/runner.py",
        [("            done, code = job, 1  # its cost", "            raise  # its cost")],
        ["tests/test_bench_run.py::test_a_bug_mid_job_still_destroys_the_instance_and_pays_for_it"],
    ),
    Mutant(
        "benchmark records no cost for failed attempts",
        "gpushopper/core/bench/runner.py",
        [("            cost_usd=round(cost, 6),\n", "            cost_usd=0.0,\n")],
        [
            "tests/test_bench_run.py::test_a_workload_failing_on_one_offer_is_partial_exit_1_not_retried_and_paid_for"
        ],
    ),
    Mutant(
        "benchmark retries an offer that answered no_such_ask",
        "gpushopper/core/bench/runner.py",
        [("                self.failed_offers.add(offer.id)\n", "                pass\n")],
        ["tests/test_bench_run.py::test_no_such_ask_is_skipped_without_using_an_attempt"],
    ),
    Mutant(
        "benchmark cancel with the owner gone destroys nothing",
        "gpushopper/core/bench/runner.py",
        [
            (
                "    for session in live:\n",
                "    for session in live[:0]:\n",
            )
        ],
        ["tests/test_bench_run.py::test_cancel_with_the_owner_gone_destroys_the_sessions_itself"],
    ),
    Mutant(
        "benchmark cancel misses a session its dead owner was still booting",
        "gpushopper/core/bench/runner.py",
        [
            (
                "            or (owner and all(theirs.get(k) == owner.get(k) for k in same_owner))\n",
                "",
            )
        ],
        [
            "tests/test_bench_run.py::test_cancel_with_the_owner_killed_mid_boot_destroys_what_it_was_booting"
        ],
    ),
    Mutant(
        "benchmark calls an unconfirmed teardown confirmed",
        "gpushopper/core/bench/runner.py",
        [
            (
                "        return False\n    return True\n",
                "        return True\n    return True\n",
            )
        ],
        [
            "tests/test_bench_run.py::test_a_destroy_never_confirmed_exits_3_and_a_command_exiting_3_does_not"
        ],
    ),
    # -- the provisioner's stages (issue 11): the contracts of Provisioner.attempt ---------------------
    Mutant(
        "a cleanup after a sent create skips the label lookup",
        "gpushopper/core/provisioner.py",
        [("                lookup=boot.lookup_needed,\n", "                lookup=False,\n")],
        ["tests/test_provisioner_faults.py"],
    ),
    Mutant(
        "a create that errs is not looked up by label",
        "gpushopper/core/provisioner.py",
        [
            (
                "            found = wait_for_label(provider, label, runtime=self._runtime(self._say))\n",
                "            found = None\n",
            )
        ],
        ["tests/test_provisioner_faults.py"],
    ),
    Mutant(
        "a label lookup whose listing kept failing reads as no instance",
        "gpushopper/core/teardown.py",
        [("                raise failure\n", "                pass\n")],
        ["tests/test_provisioner_faults.py"],
    ),
    Mutant(
        "a create answer checked only through failing listings reads as not ours",
        "gpushopper/core/provisioner.py",
        [("                    raise failure\n", "                    pass\n")],
        ["tests/test_provisioner_faults.py"],
    ),
    Mutant(
        "the intent is saved after the create call",
        "gpushopper/core/provisioner.py",
        [
            ("        self.store.put_session(boot.session)  # intent before action\n", ""),
            (
                "            answered = provider.create_instance(boot.spec)\n",
                "            answered = provider.create_instance(boot.spec)\n"
                "            self.store.put_session(boot.session)\n",
            ),
        ],
        ["tests/test_provisioner_faults.py"],
    ),
    Mutant(
        "a crash mid-boot re-raises without destroying",
        "gpushopper/core/provisioner.py",
        [('        abort(f"crashed: {type(exc).__name__}: {exc}")\n', "")],
        ["tests/test_provision.py::test_a_crash_right_after_create_still_destroys_the_instance"],
    ),
    Mutant(
        "sandbox stop leaves the sshd of instances whose server was SIGKILLed",
        "gpushopper/cli/sandbox.py",
        [('        kill_strays(root / "sshd")', '        pass  # kill_strays(root / "sshd")')],
        [
            "tests/test_sandbox.py::test_stop_with_instances_still_rented_leaves_no_process",
            "tests/test_sandbox.py::test_stop_ends_the_sshd_of_a_server_that_was_killed",
        ],
    ),
    Mutant(
        "a transfer download lets the instance's scp name a folder '..'",
        "gpushopper/remote/transfer.py",
        [('    if name in (b"", b".", b"..") or', '    if name in (b"", b".") or')],
        ["tests/test_transfer.py::test_a_download_refuses_names_from_the_instance_that_climb_out"],
    ),
    Mutant(
        "a result download kills the tar stream once the archive ends",
        "gpushopper/remote/jobwrap.py",
        [
            (
                "            if not complete and proc.poll() is None:",
                "            if proc.poll() is None:",
            )
        ],
        [
            "tests/test_run.py::test_the_tar_stream_is_read_to_its_end_before_the_process_is_waited_for"
        ],
    ),
    Mutant(
        "a run SIGKILLed mid-job keeps its instance past the reservation",
        "gpushopper/core/lifecycle.py",
        [
            (
                "    if ends is not None and now >= ends:",
                "    if ends is not None and now >= ends + timedelta(days=1):",
            )
        ],
        [
            "tests/test_run.py::test_a_run_sigkilled_mid_job_leaves_the_job_to_attach_and_its_rental_to_the_deadline"
        ],
    ),
    # -- thin commands (issue 11): the request rules in core/request.py ---------------------------
    Mutant(
        "a profile's or the setting's hours escape the hard maximum",
        "gpushopper/core/request.py",
        [
            (
                "        rules.check_hours(hours, hard_max_s, flags.override)\n",
                "        rules.check_hours(flags.hours_s or 0, hard_max_s, flags.override)\n",
            )
        ],
        [
            "tests/test_request.py::test_a_reservation_past_the_hard_maximum_is_refused_unless_overridden"
        ],
    ),
    Mutant(
        "a job's --hours past the hard maximum is let through",
        "gpushopper/core/request.py",
        [
            (
                "            rules.check_hours(flags.hours_s, hard_max_s, False)\n",
                "            pass\n",
            )
        ],
        ["tests/test_request.py::test_a_job_refuses_only_an_explicit_hours_and_caps_the_rest"],
    ),
    Mutant(
        "an empty --secret-env variable is sent as the secret",
        "gpushopper/core/request.py",
        [("        if not value:\n", "        if value is None:\n")],
        ["tests/test_request.py::test_a_missing_secret_names_the_variable_and_never_a_value"],
    ),
    Mutant(
        "--auto-retry 0 falls back to the profile's retries",
        "gpushopper/core/request.py",
        [("    if flags.auto_retry is not None:\n", "    if flags.auto_retry:\n")],
        ["tests/test_request.py::test_an_auto_retry_of_zero_on_the_flag_still_beats_the_profile"],
    ),
    # -- the store boundary (issue 11): sessions typed, damaged records kept and reported ---------
    Mutant(
        "a damaged session record is dropped at the store, not reported",
        "gpushopper/model/session.py",
        [
            (
                "                out.damaged[session_id] = Damaged(session_id, why, record)\n",
                "                pass\n",
            )
        ],
        ["tests/test_store.py", "tests/test_lifecycle.py"],
    ),
    Mutant(
        "a session rewrite forgets the record it was read from (bytes change)",
        "gpushopper/model/session.py",
        [
            (
                "        base = original if original is not None else self.source\n",
                "        base = original\n",
            )
        ],
        ["tests/test_store.py"],
    ),
    Mutant(
        "end_session destroys before it marks the session ending",
        "gpushopper/core/teardown.py",
        [
            (
                "    ending.mark_ending()\n    ending.destroy()\n",
                "    ending.destroy()\n    ending.mark_ending()\n",
            )
        ],
        ["tests/test_teardown.py"],
    ),
    # -- review 18 (reviewer A): what the typed store boundary must still do -------------------
    Mutant(
        "a session is typed with its record's own id, not its key (end_session acts on '')",
        "gpushopper/model/session.py",
        [('            kwargs["id"] = key\n', "            pass\n")],
        [
            "tests/test_teardown.py::test_end_session_ends_a_record_without_an_id_of_its_own_under_its_key",
            "tests/test_store.py::test_a_session_is_its_key_even_when_its_record_has_no_id_or_another",
        ],
    ),
    Mutant(
        "a confirmed destroy keeps the error of the failed one before it",
        "gpushopper/core/teardown.py",
        [('                current.rest.pop("error", None)\n', "                pass\n")],
        [
            "tests/test_teardown.py::test_a_destroy_retried_to_success_clears_the_error_the_failed_one_recorded"
        ],
    ),
    Mutant(
        "end_session types a record damaged during the destroy (crash after it)",
        "gpushopper/core/teardown.py",
        [
            (
                "                if why is not None:  # damaged (or removed) since it was read: left as it is\n",
                "                if False:\n",
            )
        ],
        [
            "tests/test_teardown.py::test_a_record_damaged_during_the_destroy_is_left_as_it_is_and_the_destroy_said"
        ],
    ),
    Mutant(
        "a booting session whose instance is gone is closed ended, not failed",
        "gpushopper/core/enforcer.py",
        [
            (
                "SessionStatus.FAILED if session.booting else SessionStatus.ENDED",
                "SessionStatus.ENDED",
            )
        ],
        [
            "tests/test_enforcer.py::test_a_booting_session_whose_instance_is_gone_is_closed_failed_keeping_its_reason"
        ],
    ),
    Mutant(
        "a job's setup time is written into a damaged session record",
        "gpushopper/core/jobs.py",
        [
            (
                "                if record_problem(record) is None:  # a damaged record is never rewritten\n",
                "                if isinstance(record, dict):\n",
            )
        ],
        [
            "tests/test_jobs_steps.py::test_the_setup_time_is_recorded_on_a_valid_session_and_never_on_a_damaged_one"
        ],
    ),
    Mutant(
        "a benchmark attempt's damaged record that says it ended makes the run exit 3",
        "gpushopper/core/bench/runner.py",
        [("            and not _says_destroyed(bad.record)\n", "            and True\n")],
        [
            "tests/test_bench_workloads.py::test_an_attempts_damaged_records_make_its_teardown_unconfirmed_unless_they_say_destroyed"
        ],
    ),
    # -- thin commands, round 2 (issue 11): the rules moved out of watch, doctor, provision, sessions
    Mutant(
        "a provision hand-off that reached no one leaves the session running",
        "gpushopper/core/request.py",
        [("        raise provisioner.undo(session, exc) from None\n", "        raise\n")],
        [
            "tests/test_request.py::test_a_hand_off_that_reaches_no_one_destroys_the_new_session",
            "tests/test_accidents.py::test_item2_a_hand_off_that_reaches_no_one_is_destroyed_too",
        ],
    ),
    Mutant(
        "watch overrides an inherited SIG_IGN (nohup) on SIGHUP",
        "gpushopper/core/watcher.py",
        [
            (
                "            if signal.getsignal(sig) is signal.SIG_IGN and sig in KEEP_IGNORED:\n",
                "            if False:\n",
            )
        ],
        ["tests/test_watch_loop.py::test_the_stop_pipe_keeps_an_inherited_ignored_sighup"],
    ),
    Mutant(
        "watch --once stopped by a signal destroys the guarded sessions",
        "gpushopper/core/watcher.py",
        [
            (
                "        if signum is not None and once:\n",
                "        if signum is not None and not once:\n",
            )
        ],
        ["tests/test_watch_loop.py"],
    ),
    Mutant(
        "doctor passes with no provider credentials at all",
        "gpushopper/core/doctor.py",
        [("    if configured == 0:\n", "    if configured < 0:\n")],
        ["tests/test_doctor.py"],
    ),
    Mutant(
        "doctor's report is ok with a failed check",
        "gpushopper/core/doctor.py",
        [
            (
                '        return all(c.status != "fail" for c in self.checks)\n',
                "        return True\n",
            )
        ],
        ["tests/test_doctor.py"],
    ),
    Mutant(
        "provision's budget warning ignores this month's spend",
        "gpushopper/core/request.py",
        [
            (
                "        return budget_warning(sessions(), self.projected_usd, now, budget)\n",
                "        return budget_warning([], self.projected_usd, now, budget)\n",
            )
        ],
        ["tests/test_request.py"],
    ),
    Mutant(
        "a refresh stays quiet when a running session's instance is gone",
        "gpushopper/core/sessions.py",
        [
            (
                '    if said in ("gone", "exited", "stopped") and view["status"] in ("running", "verifying"):\n',
                '    if said in ("exited", "stopped") and view["status"] in ("running", "verifying"):\n',
            )
        ],
        ["tests/test_sessions_rules.py", "tests/test_json_contract.py"],
    ),
    Mutant(
        "sessions list shows ended sessions without --all",
        "gpushopper/core/sessions.py",
        [("        if not show_all and session.done:\n", "        if False:\n")],
        ["tests/test_sessions_rules.py"],
    ),
    # -- the end of a job (issue 11): the steps of JobRunner._finish and _watch ---------------------
    Mutant(
        "job end: a destroy never confirmed exits with the command's code",
        "gpushopper/core/jobs.py",
        [("    if unconfirmed:\n        code = 3\n", "    if unconfirmed:\n        code = 1\n")],
        ["tests/test_run.py::test_a_destroy_that_is_never_confirmed_exits_3_and_says_so"],
    ),
    Mutant(
        "job end: a failed destroy is recorded as no error",
        "gpushopper/core/jobs.py",
        [("            teardown_error = str(exc)\n", "            teardown_error = None\n")],
        ["tests/test_run.py::test_a_destroy_that_is_never_confirmed_exits_3_and_says_so"],
    ),
    Mutant(
        "job end: a command that cannot be stopped skips the destroy",
        "gpushopper/core/jobs.py",
        [
            (
                "        except Exception as exc:  # noqa: BLE001 - the destroy below still ends it\n",
                "        except OSError as exc:  # noqa: BLE001 - the destroy below still ends it\n",
            )
        ],
        [
            "tests/test_run.py::test_attach_refuses_a_machine_with_another_host_key_and_still_destroys"
        ],
    ),
    Mutant(
        "job watch: an exit status of 256 from the instance is taken (the tool exits 0)",
        "gpushopper/core/jobs.py",
        [
            (
                "        if text.isascii() and text.isdigit() and int(text) <= 255:\n",
                "        if text.isascii() and text.isdigit():\n",
            )
        ],
        ["tests/test_jobs_steps.py::test_an_exit_status_no_shell_writes_fails_the_job_not_the_ssh"],
    ),
    Mutant(
        "jobs cancel brings a detached job's log home with its secrets in it",
        "gpushopper/core/jobs.py",
        [("        unredactable = self._redact(spec)\n", "        unredactable: list[str] = []\n")],
        [
            "tests/test_run.py::test_a_detached_jobs_secret_stays_out_of_what_attach_and_cancel_bring_home"
        ],
    ),
    Mutant(
        "job watch: a full local disk escapes the job and leaves the instance running",
        "gpushopper/core/jobs.py",
        [
            (
                "        except (GpuShopperError, OSError) as exc:  # OSError: a local disk full, a log unwritable\n",
                "        except GpuShopperError as exc:\n",
            )
        ],
        ["tests/test_run.py::test_a_full_local_disk_while_streaming_stops_collects_and_destroys"],
    ),
    Mutant(
        "jobs cancel: a full local disk skips the destroy",
        "gpushopper/core/jobs.py",
        [
            (
                "        except (GpuShopperError, OSError) as exc:  # the destroy below happens all the same\n",
                "        except GpuShopperError as exc:\n",
            )
        ],
        ["tests/test_run.py::test_cancel_with_a_full_local_disk_still_destroys"],
    ),
    Mutant(
        "jobs attach counts --max-duration from the attach",
        "gpushopper/core/jobs.py",
        [("        if started_at is not None:\n", "        if started_at is None:\n")],
        [
            "tests/test_run.py::test_attach_counts_max_duration_from_the_commands_start_not_from_the_attach"
        ],
    ),
    Mutant(
        "jobs cancel: Ctrl-C while the command is stopped skips the destroy",
        "gpushopper/core/jobs.py",
        [
            (
                "        except KeyboardInterrupt as exc:  # a signal mid-cancel: on to the destroy, 128+N\n",
                "        except ZeroDivisionError as exc:\n",
            )
        ],
        [
            "tests/test_run.py::test_a_signal_while_cancel_stops_the_command_still_destroys_exits_130"
        ],
    ),
    Mutant(
        "job end: a watchdog that fires leaves the command running",
        "gpushopper/core/jobs.py",
        [
            (
                '; stopping it")\n        self._stop(job)\n',
                '; stopping it")\n',
            )
        ],
        ["tests/test_run.py::test_a_command_deaf_to_term_is_killed_after_the_grace"],
    ),
    Mutant(
        "job end: results that did not come home still make a success",
        "gpushopper/core/jobs.py",
        [
            (
                '                outcome.status, outcome.failure_stage = "failed", "collecting"\n',
                "                pass\n",
            )
        ],
        [
            "tests/test_run.py::test_a_failed_download_is_retried_and_a_lasting_failure_leaves_no_half_file"
        ],
    ),
    Mutant(
        "job end: an instance gone after a long SSH drop is never asked about",
        "gpushopper/core/jobs.py",
        [
            (
                "            if self.runtime.mono() - stream.lost_since > RECONNECT_S:\n                if self._instance_gone(session, outcome):\n",
                "            if self.runtime.mono() - stream.lost_since > RECONNECT_S:\n                if False:\n",
            )
        ],
        [
            "tests/test_jobs_steps.py::test_a_long_ssh_drop_asks_the_provider_whether_the_instance_is_gone"
        ],
    ),
    Mutant(
        "job end: a signal cuts the teardown short",
        "gpushopper/core/jobs.py",
        [
            (
                "        with interrupts.deferred():\n            if outcome.status is None:\n",
                "        with contextlib.nullcontext():\n            if outcome.status is None:\n",
            )
        ],
        [
            "tests/test_jobs_steps.py::test_a_signal_while_the_instance_is_destroyed_waits_for_the_destroy_and_the_record"
        ],
    ),
    Mutant(
        "benchmark: an attempt whose teardown was not confirmed is reported at another stage",
        "gpushopper/core/bench/runner.py",
        [('            attempt["stage"] = "teardown"\n', "            pass\n")],
        [
            "tests/test_bench_run.py::test_a_destroy_never_confirmed_exits_3_and_a_command_exiting_3_does_not"
        ],
    ),
    Mutant(
        "benchmark: an attempt's cost never leaves the budget's commitments",
        "gpushopper/core/bench/runner.py",
        [('        self._release(record["key"], cost)\n', "        pass\n")],
        ["tests/test_bench_run.py::test_custom_workload_on_two_offers_stores_both_with_their_cost"],
    ),
    # -- thin commands, round 3 (issue 11): cleanup-orphans', run's, benchmark run's and the
    # offer query's rules in core/cleanup.py, core/jobstart.py, core/bench/start.py, core/request.py
    Mutant(
        "cleanup-orphans says all clear after a failed destroy",
        "gpushopper/core/cleanup.py",
        [
            (
                "        return not self.report.ok or any(o.result in FAILED for o in self.outcomes)\n",
                "        return not self.report.ok\n",
            )
        ],
        ["tests/test_cleanup.py::test_a_failed_destroy_is_warned_about_and_the_sweep_is_blind"],
    ),
    Mutant(
        # (without --yes the enforcer's destroy=False leaves a mark_ended too: that one
        # would be equivalent, so the mutant drops the closing instead)
        "cleanup-orphans --yes never closes a session whose instance is gone",
        "gpushopper/core/cleanup.py",
        [
            (
                "a.kind in REPORTED or (destroy and a.kind == MARK_ENDED)]",
                "a.kind in REPORTED]",
            )
        ],
        ["tests/test_cleanup.py"],
    ),
    Mutant(
        "cleanup-orphans without --yes destroys what it lists",
        "gpushopper/core/cleanup.py",
        [
            (
                "    outcomes = enforcer.execute_all(chosen, destroy=destroy)\n",
                "    outcomes = enforcer.execute_all(chosen, destroy=True)\n",
            )
        ],
        ["tests/test_cleanup.py"],
    ),
    Mutant(
        "run rents although the answer at the prompt was no",
        "gpushopper/core/jobstart.py",
        [("        if not confirm(choice):\n", "        if not (confirm(choice) or True):\n")],
        ["tests/test_jobstart.py::test_a_no_at_the_prompt_rents_nothing"],
    ),
    Mutant(
        "run reports a declined prompt as a failed job",
        "gpushopper/core/jobstart.py",
        [("        if isinstance(exc.cause, Declined):\n", "        if False:\n")],
        ["tests/test_jobstart.py"],
    ),
    Mutant(
        "run asks offers for no room for the uploads",
        "gpushopper/core/jobstart.py",
        [
            (
                "    built.request.min_disk_free_gb = min_disk_free_gb(upload_bytes(spec))\n",
                "    built.request.min_disk_free_gb = None\n",
            )
        ],
        ["tests/test_jobstart.py"],
    ),
    Mutant(
        "benchmark run stopped before renting leaves its run record open",
        "gpushopper/core/bench/start.py",
        [("        runner.abandon(exc)\n", "        pass\n")],
        ["tests/test_bench_start.py"],
    ),
    Mutant(
        "benchmark run starts flux-lora without its token",
        "gpushopper/core/bench/start.py",
        [
            (
                "    if needed is not None and needed not in secret_env:\n",
                "    if needed is not None and needed in secret_env:\n",
            )
        ],
        ["tests/test_bench_start.py"],
    ),
    Mutant(
        "a profile's filter beats the flag given on the command line",
        "gpushopper/core/query.py",
        [
            (
                "    if flag not in (None, (), []):\n        return flag\n    if key in profile:\n",
                "    if flag not in (None, (), []) and key not in profile:\n        return flag\n    if key in profile:\n",
            )
        ],
        ["tests/test_request.py"],
    ),
    # -- the JSON mode and the rent prompt (issue 11 review) ---------------------------------------
    Mutant(
        "--json at a terminal still asks before renting (a script gets a prompt)",
        "gpushopper/cli/provision.py",
        [("    if yes or as_json or not prompting():\n", "    if yes or not prompting():\n")],
        [
            "tests/test_first_contact.py::test_json_or_yes_never_asks_even_at_a_terminal",
            "tests/test_first_contact.py::test_run_with_json_never_asks_at_a_terminal",
        ],
    ),
    Mutant(
        "--yes at a terminal still asks before renting",
        "gpushopper/cli/provision.py",
        [("    if yes or as_json or not prompting():\n", "    if as_json or not prompting():\n")],
        ["tests/test_first_contact.py::test_json_or_yes_never_asks_even_at_a_terminal"],
    ),
    Mutant(
        "an error escaping a command forgets the command's own --json",
        "gpushopper/cli/output.py",
        [
            (
                '            setattr(exc, _JSON_MARK, bool(kwargs.get("as_json")))\n',
                "            setattr(exc, _JSON_MARK, False)\n",
            )
        ],
        [
            "tests/test_output.py::test_an_error_is_written_as_the_command_that_raised_it_parsed_its_json"
        ],
    ),
    Mutant(
        "watch's cost-rate metric adds the prices of ended sessions",
        "gpushopper/core/watcher.py",
        [
            (
                "            if session.live and session.price_per_hour:\n",
                "            if session.price_per_hour:\n",
            )
        ],
        [
            "tests/test_watch_loop.py::test_metrics_count_sessions_by_status_and_add_only_the_live_ones_prices"
        ],
    ),
    Mutant(
        "a --json after '--' (the remote command's) turns our error into JSON",
        "gpushopper/cli/output.py",
        [
            (
                '    ours = args[: args.index("--")] if "--" in args else args\n    return "--json" in ours\n',
                '    ours = args\n    return "--json" in ours\n',
            )
        ],
        [
            "tests/test_output.py::test_a_json_given_only_to_a_remote_command_never_switches_our_output"
        ],
    ),
    Mutant(
        "a results folder replaces the user's folder of its name instead of merging",
        "gpushopper/core/jobs.py",
        [("        if landed_dir and target.is_dir():\n", "        if False:\n")],
        [
            "tests/test_jobs_steps.py::test_results_merge_into_the_users_folders_and_never_delete_what_the_instance_did_not_send"
        ],
    ),
]


def copy_tree(dest: Path) -> None:
    for name in ("gpushopper", "tests", "benchmarks"):
        shutil.copytree(ROOT / name, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", dest / "pyproject.toml")


def stale(mutant: Mutant, root: Path = ROOT) -> list[str]:
    """Why ``mutant`` no longer fits the code (an edit not found once, a test file gone)."""
    text = (root / mutant.path).read_text()
    out = [
        f"{old!r} occurs {text.count(old)} times in {mutant.path}"
        for old, _ in mutant.edits
        if text.count(old) != 1
    ]
    out += [f"no test file {t}" for t in mutant.tests if not (root / t.split("::")[0]).exists()]
    return out


def apply(dest: Path, mutant: Mutant) -> None:
    path = dest / mutant.path
    text = path.read_text()
    for old, new in mutant.edits:
        text = text.replace(old, new)
    path.write_text(text)


def run(mutant: Mutant, baseline: bool = False) -> tuple[bool, float, str]:
    with tempfile.TemporaryDirectory(prefix="gs-mutant-") as tmp:
        dest = Path(tmp)
        copy_tree(dest)
        if not baseline:
            apply(dest, mutant)
        env = {**os.environ, "PYTHONPATH": str(dest), "PYTHONDONTWRITEBYTECODE": "1"}
        started = time.monotonic()
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *mutant.tests],
            cwd=dest,
            env=env,
            capture_output=True,
            text=True,
        )
        took = time.monotonic() - started
        failed = [line for line in proc.stdout.splitlines() if line.startswith("FAILED")]
        return proc.returncode != 0, took, (failed[0] if failed else proc.stdout.strip()[-120:])


def main() -> int:
    args = sys.argv[1:]
    if "-h" in args or "--help" in args:
        print(__doc__.strip())
        print("\nMutants:\n" + "\n".join(f"  {m.name}" for m in MUTANTS))
        return 0
    baseline = "--baseline" in args
    wanted = [w.lower() for w in args if w != "--baseline"]
    chosen = [m for m in MUTANTS if not wanted or any(w in m.name.lower() for w in wanted)]
    if not chosen:
        print(f"no mutant's name contains any of {wanted}; --help lists them", file=sys.stderr)
        return 2
    problems = [f"{m.name}: {why}" for m in chosen for why in stale(m)]
    if problems:  # a mutant that no longer applies would test nothing: fix it first
        print("\n".join(problems), file=sys.stderr)
        return 2
    if baseline:
        broken = 0
        for mutant in chosen:
            failed, took, detail = run(mutant, baseline=True)
            broken += failed
            print(f"{'FAILS' if failed else 'passes'} {took:5.1f}s  {mutant.name}", flush=True)
        return 1 if broken else 0
    survived = 0
    for mutant in chosen:
        killed, took, detail = run(mutant)
        survived += not killed
        verdict = "killed  " if killed else "SURVIVED"
        print(f"{verdict} {took:5.1f}s  {mutant.name}\n          {detail}", flush=True)
    print(f"{len(chosen) - survived} of {len(chosen)} mutants killed")
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
