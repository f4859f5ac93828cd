package app.handoff.android

import android.app.Application
import androidx.lifecycle.AndroidViewModel
import androidx.lifecycle.viewModelScope
import app.handoff.ffi.CallAttempt
import app.handoff.ffi.Enrolment
import app.handoff.ffi.HandoffException
import app.handoff.ffi.TaskDetail
import app.handoff.sdk.Handoff
import app.handoff.sdk.SyncStatus
import app.handoff.sdk.Views
import kotlinx.coroutines.ExperimentalCoroutinesApi
import kotlinx.coroutines.flow.MutableStateFlow
import kotlinx.coroutines.flow.SharingStarted
import kotlinx.coroutines.flow.StateFlow
import kotlinx.coroutines.flow.flatMapLatest
import kotlinx.coroutines.flow.filterNotNull
import kotlinx.coroutines.flow.stateIn
import kotlinx.coroutines.launch

/**
 * Screens read [views], [syncStatus] and [message]; every action goes to the
 * core through [Handoff]. A refused action becomes a message with the core's
 * own reason: no rule is checked here.
 */
@OptIn(ExperimentalCoroutinesApi::class) // flatMapLatest
class HandoffViewModel(app: Application) : AndroidViewModel(app) {
    private val handoff = MutableStateFlow<Handoff?>(null)
    /** `true` once the store is open; until then the app shows [updating]. */
    val opened = MutableStateFlow(false)
    /** How far an open that derives every task again has come (0..1), if it does. */
    val updating = MutableStateFlow<Float?>(null)
    val enrolment = MutableStateFlow<Enrolment?>(null)
    val message = MutableStateFlow<String?>(null)
    val detail = MutableStateFlow<TaskDetail?>(null)

    val views: StateFlow<Views?> = handoff.filterNotNull().flatMapLatest { it.views }
        .stateIn(viewModelScope, SharingStarted.Eagerly, null)
    val syncStatus: StateFlow<SyncStatus> = handoff.filterNotNull().flatMapLatest { it.syncStatus }
        .stateIn(viewModelScope, SharingStarted.Eagerly, SyncStatus.Idle)

    init {
        viewModelScope.launch {
            val h = (app as HandoffApplication).handoff { done, total ->
                updating.value = if (total == 0) 1f else done.toFloat() / total
            }
            handoff.value = h
            enrolment.value = h.enrolment()
            opened.value = true
            if (enrolment.value != null) h.startLiveSync()
        }
        // Live sync brought news: the open task is re-read too.
        viewModelScope.launch {
            views.collect {
                val open = detail.value ?: return@collect
                detail.value = runCatching { handoff.value?.taskDetail(open.taskId) }.getOrNull()
            }
        }
        // Revoked while live: the core wiped the store; back to enrolment.
        viewModelScope.launch {
            syncStatus.collect {
                if (it is SyncStatus.Revoked && enrolment.value != null) {
                    enrolment.value = null
                    detail.value = null
                }
            }
        }
    }

    private fun act(block: suspend Handoff.() -> Unit) {
        val h = handoff.value ?: return
        viewModelScope.launch {
            try {
                h.block()
                detail.value?.let { detail.value = h.taskDetail(it.taskId) }
            } catch (e: HandoffException) {
                message.value = e.userMessage()
            }
            if (syncStatus.value is SyncStatus.Revoked) {
                enrolment.value = null
                detail.value = null
            }
        }
    }

    fun enrol(relayUrl: String, invite: String) = act {
        enrolment.value = enrol(relayUrl, invite)
        startLiveSync()
    }

    fun open(taskId: String) = act { detail.value = taskDetail(taskId) }
    fun closeDetail() { detail.value = null }
    fun claim(taskId: String) = act { claim(taskId) }
    fun acknowledge(taskId: String, note: String) = act { acknowledge(taskId, note) }
    fun tick(taskId: String, item: Int) = act { tickChecklistItem(taskId, item.toUInt()) }
    fun logCall(taskId: String, attempt: CallAttempt) = act { logCallAttempt(taskId, attempt) }
    fun submit(taskId: String, note: String) = act { submit(taskId, note) }
    fun approve(taskId: String) = act { approve(taskId) }
    fun returnWork(taskId: String, feedback: String) = act { returnWithFeedback(taskId, feedback) }
    fun dismiss(key: String) = act { dismissAttention(key) }
    fun refresh() = act { syncNow() }
    suspend fun kpis(fromMillis: Long, toMillis: Long) = handoff.value?.kpis(fromMillis, toMillis) ?: emptyList()
    fun clearMessage() { message.value = null }

    override fun onCleared() {
        handoff.value?.stopLiveSync()
    }
}
