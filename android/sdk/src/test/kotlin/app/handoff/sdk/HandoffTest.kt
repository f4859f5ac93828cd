package app.handoff.sdk

import app.handoff.ffi.ActionOutcome
import app.handoff.ffi.CallAttempt
import app.handoff.ffi.CallOutcome
import app.handoff.ffi.Category
import app.handoff.ffi.DelegationLevel
import app.handoff.ffi.HandoffException
import app.handoff.ffi.NewTask
import app.handoff.ffi.PatientRef
import app.handoff.ffi.Priority
import app.handoff.ffi.Role
import app.handoff.ffi.SyncEvent
import app.handoff.ffi.SyncListener
import app.handoff.ffi.TaskCommand
import app.handoff.ffi.TaskStatus
import app.handoff.ffi.TaskStore
import java.io.File
import java.nio.file.Files
import java.util.concurrent.CopyOnWriteArrayList
import kotlin.test.assertEquals
import kotlin.test.assertFalse
import kotlin.test.assertFailsWith
import kotlin.test.assertNotNull
import kotlin.test.assertNull
import kotlin.test.assertTrue
import kotlinx.coroutines.flow.first
import kotlinx.coroutines.runBlocking
import kotlinx.coroutines.withTimeout
import org.junit.After
import org.junit.Before
import org.junit.Test

/**
 * The Kotlin layer over the real library and a real relay on 127.0.0.1.
 * These cover the glue: records and enums cross intact, errors become the
 * typed exceptions, the listener fires, objects close. The rules themselves
 * are tested in the core.
 */
class HandoffTest {
    private lateinit var relay: Relay
    private lateinit var dir: File
    private val open = mutableListOf<AutoCloseable>()

    @Before
    fun setUp() {
        relay = Relay()
        dir = Files.createTempDirectory("handoff-phones").toFile()
    }

    @After
    fun tearDown() {
        open.asReversed().forEach { runCatching { it.close() } }
        relay.close()
        dir.deleteRecursively()
    }

    private fun phone(name: String, key: ByteArray = newKey()): Handoff = runBlocking {
        Handoff.open(File(dir, "$name.db").path, key).also { open += it }
    }

    private fun call(outcome: CallOutcome, notes: String) =
        CallAttempt(outcome = outcome, notes = notes)

    private fun followUp(title: String, assignee: String?, pool: Role?) = NewTask(
        title = title,
        outcome = "Reach the patient and document recovery status",
        why = "Post-procedure follow-up within 48 h",
        priority = Priority.HIGH,
        category = Category.FOLLOW_UP_CALL,
        level = DelegationLevel.DELEGABLE,
        patient = PatientRef(displayName = "Pat Example", phone = "555-0100"),
        assignee = assignee,
        pool = pool,
    )

    /** A manager and a front desk, enrolled, each knowing the other. */
    private fun team(): Pair<Handoff, Handoff> = runBlocking {
        val (teamId, invite) = relay.createTeam("Clinic", "max")
        val max = phone("max")
        val enrolled = max.enrol(relay.url, invite)
        assertEquals("max", enrolled.userId)
        assertEquals(Role.MANAGER, enrolled.role)
        val fd = phone("fay")
        fd.enrol(relay.url, relay.invite(teamId, "fay", "front_desk"))
        max.syncNow()
        assertEquals(setOf("max", "fay"), max.team()!!.members.map { it.userId }.toSet())
        max to fd
    }

    @Test
    fun offlineWorkSyncsAndBothPhonesSeeTheSameTask() = runBlocking<Unit> {
        val (max, fay) = team()

        // Offline: the manager hands off a call and puts another in the pool.
        val task = max.delegate(followUp("Call after knee injection", "fay", null))
        val pooled = max.delegate(followUp("Call about lab results", null, Role.FRONT_DESK))
        max.syncNow()
        fay.syncNow()
        val queue = fay.views.value!!.queue
        assertEquals(listOf(task), (queue.overdue + queue.today + queue.upcoming).map { it.taskId })
        assertEquals(listOf(pooled), fay.views.value!!.pool.map { it.taskId })

        // The buttons come from the core's rules.
        val offered = fay.taskDetail(task).availableCommands
        assertTrue(TaskCommand.LOG_CALL in offered && TaskCommand.SUBMIT in offered, "$offered")
        assertFalse(TaskCommand.APPROVE in offered, "$offered")
        assertTrue(TaskCommand.CLAIM in fay.taskDetail(pooled).availableCommands)

        // Offline on the front desk: acknowledge, claim, two calls, submit.
        fay.acknowledge(task, "Will call before noon")
        fay.claim(pooled)
        fay.logCallAttempt(task, call(CallOutcome.VOICEMAIL, "left a message"))
        fay.logCallAttempt(task, call(CallOutcome.REACHED, "recovering well"))
        fay.submit(task, "reached on second try")
        assertEquals(TaskStatus.SUBMITTED, fay.taskDetail(task).status)
        assertEquals(2u, fay.taskDetail(task).calls.size.toUInt())

        // Nothing has reached the manager yet.
        assertEquals(TaskStatus.ASSIGNED, max.taskDetail(task).status)
        assertTrue(max.views.value!!.inbox.isEmpty())

        val pushed = fay.syncNow()
        assertTrue(pushed.pushed >= 5u, "pushed ${pushed.pushed}")
        max.syncNow()
        assertEquals(listOf(task), max.views.value!!.inbox.map { it.task.taskId })
        assertTrue(TaskCommand.APPROVE in max.taskDetail(task).availableCommands)
        max.approve(task, "thanks")
        max.syncNow()
        fay.syncNow()

        val mine = fay.taskDetail(task)
        val theirs = max.taskDetail(task)
        // The same task on both phones; only the commands offered differ by user.
        assertEquals(theirs.copy(availableCommands = listOf()), mine.copy(availableCommands = listOf()))
        assertEquals(TaskStatus.COMPLETED, mine.status)
        assertEquals(listOf(CallOutcome.VOICEMAIL, CallOutcome.REACHED), mine.calls.map { it.outcome })
        assertEquals("Pat Example", mine.patient?.displayName)
        assertEquals(true, mine.lastReview?.approved)
        assertTrue(mine.history.all { it.outcome == ActionOutcome.Applied })
        assertEquals(
            listOf("created", "acknowledged", "call_logged", "call_logged", "submitted", "approved"),
            mine.history.map { it.action },
        )
        assertEquals(
            max.taskDetail(pooled).copy(availableCommands = listOf()),
            fay.taskDetail(pooled).copy(availableCommands = listOf()),
        )
        assertEquals("fay", max.taskDetail(pooled).assignee)
        assertTrue(fay.views.value!!.attention.isEmpty())
        val kpis = max.kpis(0, Long.MAX_VALUE)
        assertEquals(1u, kpis.single { it.userId == "fay" }.done)
    }

    @Test
    fun rulesAndBadInputSurfaceAsTypedExceptions() = runBlocking<Unit> {
        val (max, fay) = team()
        val task = max.delegate(followUp("Call after injection", "fay", null))
        max.syncNow()
        fay.syncNow()

        val notAllowed = assertFailsWith<HandoffException.Refused> { fay.approve(task) }
        assertEquals("not_permitted", notAllowed.code)
        assertTrue(notAllowed.userMessage().isNotBlank())

        val empty = assertFailsWith<HandoffException.InvalidInput> {
            max.delegate(followUp("", "fay", null))
        }
        assertTrue(empty.userMessage().contains("title"), empty.userMessage())

        assertFailsWith<HandoffException.TaskNotFound> { fay.claim("no-such-task") }
        assertFailsWith<HandoffException.InvalidInput> {
            phone("nobody").enrol("http://example.com:1", "invite")
        }
        assertFailsWith<HandoffException.Enrolment> { fay.enrol(relay.url, "again") }

        val reused = relay.invite(fay.enrolment()!!.teamId, "sam", "front_desk")
        phone("sam").enrol(relay.url, reused)
        val again = assertFailsWith<HandoffException.RelayRejected> { phone("sam2").enrol(relay.url, reused) }
        assertTrue(again.status in 400u..499u, "status ${again.status}")
        // A used invite is not the end of syncing; refused credentials are
        // (decided in the core, asked across the bindings).
        assertFalse(again.endsSync())
        assertTrue(HandoffException.RelayRejected(401.toUShort(), "invalid_token", "refused").endsSync())
        assertFalse(HandoffException.RelayRejected(401.toUShort(), "", "a gateway's page").endsSync())
    }

    @Test
    fun aWrongKeyIsTypedAndTouchesNothing() = runBlocking<Unit> {
        val path = File(dir, "keyed.db").path
        val key = newKey()
        Handoff.open(path, key).use { it.enrolment() }
        val before = File(path).readBytes()

        val e = assertFailsWith<HandoffException.WrongKey> { Handoff.open(path, newKey()) }
        assertTrue(e.userMessage().contains("key"), e.userMessage())
        assertTrue(before.contentEquals(File(path).readBytes()), "a wrong key changed the file")
        // A usual open (same rules as the store was written under) has no
        // progress to tell; the listener crosses the bindings all the same.
        val told = CopyOnWriteArrayList<Pair<Int, Int>>()
        Handoff.open(path, key, onProgress = { done, total -> told += done to total }).use {
            assertNull(it.enrolment())
        }
        assertEquals(emptyList(), told.toList())
    }

    @Test
    fun liveSyncFiresTheListenerAndUpdatesTheViews() = runBlocking<Unit> {
        val (max, fay) = team()
        fay.startLiveSync()
        withTimeout(15_000) { fay.syncStatus.first { it is SyncStatus.Synced } }

        val task = max.delegate(followUp("Call the new patient", "fay", null))
        max.syncNow()
        // Nobody asks fay's phone to sync: the long-poll brings it.
        withTimeout(15_000) {
            fay.views.first { v -> v != null && (v.queue.overdue + v.queue.today + v.queue.upcoming).any { it.taskId == task } }
        }

        // A command nudges live sync: the manager sees the call without fay syncing by hand.
        fay.logCallAttempt(task, call(CallOutcome.NO_ANSWER, "no answer"))
        eventually("the call reaches the manager") {
            runBlocking { max.syncNow(); max.taskDetail(task).calls.size == 1 }
        }
        fay.stopLiveSync()
        assertEquals(SyncStatus.Idle, fay.syncStatus.value)
    }

    @Test
    fun theRawListenerHearsEveryRoundOnTheBindingsAlone() {
        val (max, _) = team()
        val events = CopyOnWriteArrayList<SyncEvent>()
        val store = TaskStore.open(File(dir, "raw.db").path, newKey(), 0)
        open += store
        val teamId = runBlocking { max.enrolment()!!.teamId }
        val listener = object : SyncListener {
            override fun onSyncEvent(event: SyncEvent) {
                events += event
            }
        }
        store.enrol(relay.url, relay.invite(teamId, "raw", "front_desk"), listener)
        store.startSync(listener).use { handle ->
            eventually("a first Synced event") { events.any { it is SyncEvent.Synced } }
            runBlocking {
                max.syncNow()
                max.delegate(followUp("Pooled", null, Role.FRONT_DESK))
                max.syncNow()
            }
            handle.syncNow()
            // (A change of the team alone says DataChanged with no task.)
            eventually("DataChanged for the pooled task") {
                events.any { it is SyncEvent.DataChanged && it.tasksUpdated > 0u }
            }
            assertEquals(1, store.sharedPool().size)
        }
        // Closed: the object refuses further calls instead of crashing.
        assertFailsWith<IllegalStateException> { store.close(); store.myQueue() }
    }

    @Test
    fun aNewPhoneHearsHowFarItsFirstCatchUpHasCome() {
        val (max, _) = team()
        // More than one pull page (1,000 changes) of pooled tasks.
        runBlocking {
            repeat(1_100) { max.delegate(followUp("Recall $it", null, Role.FRONT_DESK)) }
            max.syncNow()
        }
        val events = CopyOnWriteArrayList<SyncEvent>()
        val store = TaskStore.open(File(dir, "new.db").path, newKey(), 0)
        open += store
        val teamId = runBlocking { max.enrolment()!!.teamId }
        // Enrolment fetches the clinic's history, telling the listener as it goes.
        store.enrol(relay.url, relay.invite(teamId, "new", "front_desk"), object : SyncListener {
            override fun onSyncEvent(event: SyncEvent) {
                events += event
            }
        })
        val progress = events.filterIsInstance<SyncEvent.CatchingUp>()
        assertEquals(1, progress.size, "$events")
        assertTrue(progress[0].at > 0u && progress[0].at < progress[0].of, "${progress[0]}")
        assertTrue(events.first() is SyncEvent.DataChanged, "the first page's tasks, before the progress")
        val status = SyncStatus.CatchingUp(progress[0].at.toLong(), progress[0].of.toLong())
        assertTrue(status.fraction > 0f && status.fraction < 1f)
        assertEquals(1_100, store.sharedPool().size)
    }

    @Test
    fun aRevokedDeviceIsWipedAndSaysSo() = runBlocking<Unit> {
        val (max, fay) = team()
        val task = max.delegate(followUp("Call after injection", "fay", null))
        max.syncNow()
        fay.syncNow()
        assertNotNull(fay.taskDetail(task))

        val devices = relay.admin("devices", "--team", fay.enrolment()!!.teamId)
        val fayDevice = devices.lines().single { it.contains("\tfay\t") }.substringBefore('\t')
        relay.admin("revoke", "--device", fayDevice)

        assertFailsWith<HandoffException.DeviceRevoked> { fay.syncNow() }
        assertEquals(SyncStatus.Revoked, fay.syncStatus.value)
        assertNull(fay.enrolment())
        assertNull(fay.views.value)
        assertFailsWith<HandoffException> { fay.taskDetail(task) }
    }

    /**
     * Revoked while live: the core's live loop ends, and the phone is
     * wiped. Enrolled again with a new invite, live sync starts again
     * (it used to stay off: the ended loop's handle was kept).
     */
    @Test
    fun liveSyncStartsAgainAfterARevokedPhoneIsEnrolledAgain() = runBlocking<Unit> {
        val (max, fay) = team()
        val teamId = fay.enrolment()!!.teamId
        fay.startLiveSync()
        withTimeout(15_000) { fay.syncStatus.first { it is SyncStatus.Synced } }
        val devices = relay.admin("devices", "--team", teamId)
        val fayDevice = devices.lines().single { it.contains("\tfay\t") }.substringBefore('\t')
        relay.admin("revoke", "--device", fayDevice)
        // The next round (a local write cuts the long-poll short) hears it.
        max.delegate(followUp("Wake the poll", "fay", null))
        max.syncNow()
        withTimeout(70_000) { fay.syncStatus.first { it is SyncStatus.Revoked } }

        fay.enrol(relay.url, relay.invite(teamId, "fay", "front_desk"))
        fay.startLiveSync()
        val task = max.delegate(followUp("Call the new patient", "fay", null))
        max.syncNow()
        // Nobody asks fay's phone to sync: live sync brings it.
        withTimeout(30_000) {
            fay.views.first { v -> v != null && (v.queue.overdue + v.queue.today + v.queue.upcoming).any { it.taskId == task } }
        }
    }
}
