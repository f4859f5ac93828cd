package app.handoff.android.ui

import androidx.activity.compose.BackHandler
import androidx.compose.foundation.layout.Column
import androidx.compose.foundation.layout.Row
import androidx.compose.foundation.layout.padding
import androidx.compose.foundation.rememberScrollState
import androidx.compose.foundation.verticalScroll
import androidx.compose.material3.Button
import androidx.compose.material3.Checkbox
import androidx.compose.material3.DropdownMenu
import androidx.compose.material3.DropdownMenuItem
import androidx.compose.material3.HorizontalDivider
import androidx.compose.material3.MaterialTheme
import androidx.compose.material3.OutlinedButton
import androidx.compose.material3.OutlinedTextField
import androidx.compose.material3.Text
import androidx.compose.material3.TextButton
import androidx.compose.runtime.Composable
import androidx.compose.runtime.getValue
import androidx.compose.runtime.mutableStateListOf
import androidx.compose.runtime.mutableStateOf
import androidx.compose.runtime.remember
import androidx.compose.runtime.setValue
import androidx.compose.ui.Modifier
import androidx.compose.ui.unit.dp
import app.handoff.android.HandoffViewModel
import app.handoff.ffi.ActionOutcome
import app.handoff.ffi.CallAttempt
import app.handoff.ffi.CallOutcome
import app.handoff.ffi.ScriptAnswer
import app.handoff.ffi.TaskCommand
import app.handoff.ffi.TaskDetail

/**
 * The handoff, its SOP checklist, the call form, the review actions and the
 * full history. A button shows only for a command in
 * `task.availableCommands`, which the core computes with its own rules.
 */
@Composable
fun TaskDetailScreen(model: HandoffViewModel, task: TaskDetail) {
    BackHandler(onBack = model::closeDetail)
    val can = task.availableCommands.toSet()
    Column(Modifier.padding(16.dp).verticalScroll(rememberScrollState())) {
        TextButton(onClick = model::closeDetail) { Text("‹ Back") }
        Text(task.handoff.title, style = MaterialTheme.typography.headlineSmall)
        Text("${label(task.status)} · ${label(task.handoff.priority)} · due ${formatTime(task.handoff.dueAt)}")
        task.patient?.let { Text("Patient: ${it.displayName}${it.phone?.let { p -> " · $p" } ?: ""}") }
        Text("Outcome wanted: ${task.handoff.outcome}")
        Text("Why: ${task.handoff.why}")
        Text("From ${task.createdBy} to ${task.assignee ?: task.pool?.let { "the ${label(it)} pool" } ?: "—"}")
        if (task.escalations.isNotEmpty()) {
            Text(task.escalations.joinToString { label(it) }, color = MaterialTheme.colorScheme.error)
        }
        if (TaskCommand.CLAIM in can) {
            Button(onClick = { model.claim(task.taskId) }) { Text("Claim") }
        }
        if (TaskCommand.ACKNOWLEDGE in can && !task.acknowledged) {
            OutlinedButton(onClick = { model.acknowledge(task.taskId, "") }) { Text("Acknowledge") }
        }

        if (task.checklist.isNotEmpty()) {
            HorizontalDivider()
            Text("Checklist", style = MaterialTheme.typography.titleMedium)
            task.checklist.forEachIndexed { i, item ->
                Row {
                    Checkbox(
                        checked = item.doneBy != null,
                        enabled = item.doneBy == null && TaskCommand.TICK_CHECKLIST_ITEM in can,
                        onCheckedChange = { model.tick(task.taskId, i) },
                    )
                    Text(item.text)
                }
            }
        }

        HorizontalDivider()
        Text("Calls (${task.calls.size})", style = MaterialTheme.typography.titleMedium)
        task.calls.forEach { Text("${formatTime(it.at)} ${it.by}: ${label(it.outcome)} — ${it.notes}") }
        if (TaskCommand.LOG_CALL in can) CallForm(task.questions) { model.logCall(task.taskId, it) }
        if (TaskCommand.SUBMIT in can) Button(onClick = { model.submit(task.taskId, "") }) { Text("Submit for review") }

        task.lastReview?.let { r ->
            HorizontalDivider()
            Text(
                if (r.approved) "Approved by ${r.by}${if (r.stale) " — new work since, needs another look" else ""}"
                else "Returned by ${r.by}: ${r.feedback}",
            )
        }
        ReviewActions(model, task.taskId, can)

        HorizontalDivider()
        Text("History", style = MaterialTheme.typography.titleMedium)
        task.history.forEach { h ->
            val outcome = when (val o = h.outcome) {
                ActionOutcome.Applied -> ""
                is ActionOutcome.Refused -> " — not applied: ${o.reason}"
                is ActionOutcome.Superseded -> " — superseded: ${o.reason}"
            }
            Text("${formatTime(h.at)} ${h.by} ${h.action.replace('_', ' ')}$outcome")
        }
    }
    MessageDialog(model)
}

/** Outcome picker, notes, and the call script's questions. */
@Composable
private fun CallForm(questions: List<String>, onLog: (CallAttempt) -> Unit) {
    var outcome by remember { mutableStateOf(CallOutcome.REACHED) }
    var picking by remember { mutableStateOf(false) }
    var notes by remember { mutableStateOf("") }
    val answers = remember(questions) { mutableStateListOf(*Array(questions.size) { "" }) }
    Column {
        OutlinedButton(onClick = { picking = true }) { Text("Outcome: ${label(outcome)}") }
        DropdownMenu(expanded = picking, onDismissRequest = { picking = false }) {
            CallOutcome.entries.forEach {
                DropdownMenuItem(text = { Text(label(it)) }, onClick = { outcome = it; picking = false })
            }
        }
        questions.forEachIndexed { i, q ->
            OutlinedTextField(answers[i], { answers[i] = it }, label = { Text(q) })
        }
        OutlinedTextField(notes, { notes = it }, label = { Text("Notes") })
        Button(onClick = {
            onLog(
                CallAttempt(
                    outcome = outcome,
                    notes = notes,
                    answers = questions.zip(answers).filter { it.second.isNotBlank() }
                        .map { ScriptAnswer(it.first, it.second) },
                ),
            )
            notes = ""
        }) { Text("Log call") }
    }
}

@Composable
private fun ReviewActions(model: HandoffViewModel, taskId: String, can: Set<TaskCommand>) {
    var feedback by remember { mutableStateOf("") }
    Column {
        if (TaskCommand.APPROVE in can) Button(onClick = { model.approve(taskId) }) { Text("Approve") }
        if (TaskCommand.RETURN in can) {
            OutlinedTextField(feedback, { feedback = it }, label = { Text("Feedback") })
            OutlinedButton(onClick = { model.returnWork(taskId, feedback) }) { Text("Return with feedback") }
        }
    }
}
