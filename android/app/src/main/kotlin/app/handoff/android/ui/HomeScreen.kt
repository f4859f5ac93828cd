package app.handoff.android.ui

import androidx.compose.foundation.layout.Column
import androidx.compose.foundation.layout.Row
import androidx.compose.foundation.layout.padding
import androidx.compose.foundation.lazy.LazyColumn
import androidx.compose.foundation.lazy.items
import androidx.compose.material3.Button
import androidx.compose.material3.Card
import androidx.compose.material3.MaterialTheme
import androidx.compose.material3.Tab
import androidx.compose.material3.TabRow
import androidx.compose.material3.Text
import androidx.compose.material3.TextButton
import androidx.compose.runtime.Composable
import androidx.compose.runtime.LaunchedEffect
import androidx.compose.runtime.collectAsState
import androidx.compose.runtime.getValue
import androidx.compose.runtime.mutableStateOf
import androidx.compose.runtime.remember
import androidx.compose.runtime.setValue
import androidx.compose.ui.Alignment
import androidx.compose.ui.Modifier
import androidx.compose.ui.unit.dp
import app.handoff.android.HandoffViewModel
import app.handoff.ffi.Enrolment
import app.handoff.ffi.OwnerKpis
import app.handoff.ffi.TaskSummary

private val tabs = listOf("My queue", "Pool", "Review", "Attention")

@Composable
fun HomeScreen(model: HandoffViewModel, me: Enrolment) {
    val views by model.views.collectAsState()
    val sync by model.syncStatus.collectAsState()
    var tab by remember { mutableStateOf(0) }
    Column {
        SyncBanner(sync)
        TabRow(selectedTabIndex = tab) {
            tabs.forEachIndexed { i, name -> Tab(tab == i, { tab = i }, text = { Text(name) }) }
        }
        val v = views ?: return@Column
        LazyColumn {
            when (tab) {
                0 -> {
                    section("Overdue", v.queue.overdue, model::open)
                    section("Today", v.queue.today, model::open)
                    section("Upcoming", v.queue.upcoming, model::open)
                    item { KpiCard(model, me) }
                }
                1 -> items(v.pool, key = { it.taskId }) { t ->
                    Row(verticalAlignment = Alignment.CenterVertically) {
                        // weight: a fillMaxWidth row would leave the button no room.
                        TaskRow(t, model::open, Modifier.weight(1f))
                        Button(onClick = { model.claim(t.taskId) }) { Text("Claim") }
                    }
                }
                2 -> items(v.inbox, key = { it.task.taskId }) { r ->
                    TaskRow(r.task, model::open)
                    Text(
                        "Submitted ${formatTime(r.submittedAt)}, review by ${formatTime(r.reviewDueAt)}",
                        color = if (r.overdue) MaterialTheme.colorScheme.error else MaterialTheme.colorScheme.onSurface,
                    )
                }
                else -> items(v.attention, key = { it.key }) { a ->
                    Column(Modifier.padding(12.dp)) {
                        Text(a.title ?: "A task", style = MaterialTheme.typography.titleMedium)
                        Text("Your ${a.action.replace('_', ' ')} did not take effect: ${a.reason}")
                        Row {
                            a.taskId?.let { id -> TextButton(onClick = { model.open(id) }) { Text("Open") } }
                            TextButton(onClick = { model.dismiss(a.key) }) { Text("Dismiss") }
                        }
                    }
                }
            }
        }
    }
    MessageDialog(model)
}

private fun androidx.compose.foundation.lazy.LazyListScope.section(
    title: String,
    tasks: List<TaskSummary>,
    onOpen: (String) -> Unit,
) {
    if (tasks.isEmpty()) return
    item { Text(title, style = MaterialTheme.typography.titleSmall, modifier = Modifier.padding(8.dp)) }
    items(tasks, key = { it.taskId }) { TaskRow(it, onOpen) }
}

/** This week's figures for me, as the core counts them. */
@Composable
fun KpiCard(model: HandoffViewModel, me: Enrolment) {
    var kpis by remember { mutableStateOf<OwnerKpis?>(null) }
    val views by model.views.collectAsState()
    LaunchedEffect(views) {
        val now = System.currentTimeMillis()
        kpis = model.kpis(now - 7 * 24 * 3_600_000L, now).firstOrNull { it.userId == me.userId }
    }
    val k = kpis ?: return
    Card(Modifier.padding(12.dp)) {
        Column(Modifier.padding(12.dp)) {
            Text("Last 7 days", style = MaterialTheme.typography.titleSmall)
            Text("Done ${k.done} (on time ${k.doneOnTime}) · open ${k.open} · overdue ${k.overdue}")
            Text("Follow-ups reached within policy ${k.reachedWithinPolicy} of ${k.followUps}")
            k.medianReviewTurnaroundMs?.let { Text("Median review turnaround ${it / 3_600_000} h") }
        }
    }
}
