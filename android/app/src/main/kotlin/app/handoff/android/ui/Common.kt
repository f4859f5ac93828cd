package app.handoff.android.ui

import android.view.inputmethod.EditorInfo
import androidx.compose.foundation.clickable
import androidx.compose.foundation.layout.Column
import androidx.compose.foundation.layout.Row
import androidx.compose.foundation.layout.fillMaxWidth
import androidx.compose.foundation.layout.padding
import androidx.compose.material3.AlertDialog
import androidx.compose.material3.MaterialTheme
import androidx.compose.material3.Text
import androidx.compose.material3.TextButton
import androidx.compose.runtime.Composable
import androidx.compose.runtime.collectAsState
import androidx.compose.runtime.getValue
import androidx.compose.ui.ExperimentalComposeUiApi
import androidx.compose.ui.Modifier
import androidx.compose.ui.platform.InterceptPlatformTextInput
import androidx.compose.ui.platform.PlatformTextInputMethodRequest
import androidx.compose.ui.unit.dp
import app.handoff.android.HandoffViewModel
import app.handoff.ffi.TaskSummary
import app.handoff.sdk.SyncStatus
import java.text.DateFormat
import java.util.Date

fun formatTime(millis: Long?): String =
    millis?.let { DateFormat.getDateTimeInstance(DateFormat.SHORT, DateFormat.SHORT).format(Date(it)) } ?: "—"

/**
 * Every text field below asks the keyboard not to learn from what is typed
 * (`IME_FLAG_NO_PERSONALIZED_LEARNING`): notes and names are patients'
 * details, and a keyboard's learned words live outside the encrypted store
 * and outlast a wipe. A keyboard may ignore the flag (Gboard honours it).
 */
@OptIn(ExperimentalComposeUiApi::class)
@Composable
fun NoKeyboardLearning(content: @Composable () -> Unit) {
    InterceptPlatformTextInput(
        interceptor = { request, nextHandler ->
            val private = PlatformTextInputMethodRequest { outAttributes ->
                request.createInputConnection(outAttributes).also {
                    outAttributes.imeOptions =
                        outAttributes.imeOptions or EditorInfo.IME_FLAG_NO_PERSONALIZED_LEARNING
                }
            }
            nextHandler.startInputMethod(private)
        },
        content = content,
    )
}

/** The words for what the core computed; no decision is made here. */
fun label(e: Enum<*>): String = e.name.lowercase().replace('_', ' ')

@Composable
fun SyncBanner(status: SyncStatus) {
    val text = when (status) {
        SyncStatus.Idle -> "Not syncing"
        is SyncStatus.Synced -> "Synced ${formatTime(status.atMillis)}"
        is SyncStatus.CatchingUp -> "Catching up with the team… ${(status.fraction * 100).toInt()}%"
        is SyncStatus.Sending -> "Sending your work… ${(status.fraction * 100).toInt()}%"
        is SyncStatus.Offline -> "Offline — your work is saved and will sync"
        is SyncStatus.AuthFailed -> "Sign-in problem: ${status.reason}"
        SyncStatus.Revoked -> "This phone was removed from the team"
    }
    Text(text, style = MaterialTheme.typography.labelMedium, modifier = Modifier.padding(8.dp))
}

/** While the store opens; after an update that changed the rules, how far it has come. */
@Composable
fun OpeningScreen(updating: Float?) {
    val text = updating?.let { "Updating your tasks… ${(it * 100).toInt()}%" } ?: "Opening…"
    Text(text, style = MaterialTheme.typography.bodyLarge, modifier = Modifier.padding(24.dp))
}

@Composable
fun TaskRow(task: TaskSummary, onOpen: (String) -> Unit, modifier: Modifier = Modifier) {
    Column(
        modifier
            .fillMaxWidth()
            .clickable { onOpen(task.taskId) }
            .padding(12.dp),
    ) {
        Text(task.title, style = MaterialTheme.typography.titleMedium)
        Row {
            Text("${label(task.status)} · ${label(task.priority)} · next ${formatTime(task.nextDeadlineAt)}")
        }
        if (task.escalations.isNotEmpty()) {
            Text(task.escalations.joinToString { label(it) }, color = MaterialTheme.colorScheme.error)
        }
        if (task.staleApproval) Text("Approval needs another look", color = MaterialTheme.colorScheme.error)
    }
}

@Composable
fun MessageDialog(model: HandoffViewModel) {
    val message by model.message.collectAsState()
    message?.let {
        AlertDialog(
            onDismissRequest = model::clearMessage,
            confirmButton = { TextButton(onClick = model::clearMessage) { Text("OK") } },
            text = { Text(it) },
        )
    }
}
