// The Swift twin of android/sdk/.../Handoff.kt: views and sync state as
// published properties, commands as async functions that run off the main
// actor and refresh the views. Nothing is computed here: the core owns every
// rule and view. Keep the two files in step.
import Foundation
@_exported import HandoffFFI

/// The lists the screens render, read together from the core.
public struct Views: Equatable {
    public let queue: MyQueue
    public let pool: [TaskSummary]
    public let inbox: [ReviewItem]
    public let attention: [AttentionItem]
}

/// What the sync indicator shows.
public enum SyncStatus: Equatable {
    case idle
    case synced(at: Date, report: SyncReport)
    /// Far behind (new phone, or back after days away): `at` of `of`
    /// entries pulled so far.
    case catchingUp(at: UInt64, of: UInt64)
    /// A long outbox going up (back after hours offline, weak signal):
    /// `sent` of `of` changes so far.
    case sending(sent: UInt64, of: UInt64)
    /// No signal or relay down; work waits in the outbox.
    case offline(reason: String, retryInMs: UInt64)
    case authFailed(code: String, reason: String)
    /// The practice removed this device; its data is gone.
    case revoked
}

/// A phone's session with its store. Errors are `HandoffError`;
/// `userMessage()` gives the sentence to show.
@MainActor
public final class Handoff: ObservableObject {
    @Published public private(set) var views: Views?
    @Published public private(set) var syncStatus: SyncStatus = .idle

    private let store: TaskStore
    private var live: SyncHandle?
    /// What the app last asked for, and whether a start is under way.
    private var liveWanted = false
    private var starting = false
    private var refreshWaiting = false

    init(store: TaskStore) {
        self.store = store
    }

    /// Open the store at `path` with the 32-byte key from the Keychain.
    /// Throws `HandoffError.WrongKey` for a wrong key. The first open after
    /// an app update that changed the clinic's rules derives every task
    /// again: `onProgress` hears `done` of `total` (off the main thread) so
    /// the app can show it; a usual open does not call it.
    public static func open(
        path: String,
        key: Data,
        utcOffsetMinutes: Int32 = 0,
        onProgress: (@Sendable (_ done: UInt32, _ total: UInt32) -> Void)? = nil
    ) async throws -> Handoff {
        let progress = onProgress.map { OpenProgress(tell: $0) }
        let store = try await Task.detached {
            try TaskStore.open(path: path, key: key, utcOffsetMinutes: utcOffsetMinutes, progress: progress)
        }.value
        let handoff = Handoff(store: store)
        try await handoff.refresh()
        return handoff
    }

    private func off<T: Sendable>(_ body: @escaping @Sendable (TaskStore) throws -> T) async throws -> T {
        let store = self.store
        return try await Task.detached { try body(store) }.value
    }

    public func enrolment() async throws -> Enrolment? { try await off { try $0.enrolment() } }
    public func team() async throws -> Team? { try await off { $0.team() } }

    /// Redeem an invite, fetch the team and its tasks; `syncStatus` shows
    /// how far that has come. Cut short (`Offline`), call it again: it
    /// fetches the rest.
    public func enrol(relayUrl: String, invite: String) async throws -> Enrolment {
        defer { Task { try? await self.refresh() } }
        let listener = Listener(owner: self)
        do {
            return try await off {
                try $0.enrol(relayUrl: relayUrl, invite: invite, listener: listener)
            }
        } catch HandoffError.Offline(let reason) {
            syncStatus = .offline(reason: reason, retryInMs: 0)
            throw HandoffError.Offline(reason: reason)
        }
    }

    /// Re-read every list from the core.
    public func refresh() async throws {
        views = try await off { store -> Views? in
            guard try store.enrolment() != nil else { return nil }
            return Views(queue: try store.myQueue(), pool: try store.sharedPool(),
                         inbox: try store.reviewInbox(), attention: try store.needsAttention())
        }
    }

    public func taskDetail(_ taskId: String) async throws -> TaskDetail { try await off { try $0.taskDetail(taskId: taskId) } }
    public func kpis(from: Date, to: Date) async throws -> [OwnerKpis] {
        try await off { try $0.kpis(fromMs: Int64(from.timeIntervalSince1970 * 1000), toMs: Int64(to.timeIntervalSince1970 * 1000)) }
    }

    // MARK: commands: durable when they return; live sync is nudged

    @discardableResult
    private func command<T: Sendable>(_ body: @escaping @Sendable (TaskStore) throws -> T) async throws -> T {
        let result = try await off(body)
        live?.syncNow()
        try await refresh()
        return result
    }

    public func delegate(_ task: NewTask) async throws -> String { try await command { try $0.delegate(task: task) } }
    public func assign(_ taskId: String, to: String) async throws { try await command { try $0.assign(taskId: taskId, to: to) } }
    public func claim(_ taskId: String) async throws { try await command { try $0.claim(taskId: taskId) } }
    public func acknowledge(_ taskId: String, note: String = "") async throws { try await command { try $0.acknowledge(taskId: taskId, note: note) } }
    public func start(_ taskId: String) async throws { try await command { try $0.start(taskId: taskId) } }
    public func tickChecklistItem(_ taskId: String, item: UInt32) async throws { try await command { try $0.tickChecklistItem(taskId: taskId, item: item) } }
    public func logCallAttempt(_ taskId: String, _ attempt: CallAttempt) async throws { try await command { try $0.logCallAttempt(taskId: taskId, attempt: attempt) } }
    public func comment(_ taskId: String, _ text: String) async throws { try await command { try $0.comment(taskId: taskId, text: text) } }
    public func submit(_ taskId: String, note: String = "") async throws { try await command { try $0.submit(taskId: taskId, note: note) } }
    public func approve(_ taskId: String, note: String = "") async throws { try await command { try $0.approve(taskId: taskId, note: note) } }
    public func returnWithFeedback(_ taskId: String, _ feedback: String) async throws { try await command { try $0.returnWithFeedback(taskId: taskId, feedback: feedback) } }
    public func complete(_ taskId: String, note: String = "") async throws { try await command { try $0.complete(taskId: taskId, note: note) } }
    public func cancel(_ taskId: String, reason: String) async throws { try await command { try $0.cancel(taskId: taskId, reason: reason) } }
    public func escalate(_ taskId: String, reason: String) async throws { try await command { try $0.escalate(taskId: taskId, reason: reason) } }
    public func dismissAttention(_ key: String) async throws { try await command { try $0.dismissAttention(key: key) } }

    // MARK: sync

    /// One round now (pull-to-refresh, or a background task).
    @discardableResult
    public func syncNow() async throws -> SyncReport {
        defer { Task { try? await self.refresh() } }
        do {
            let report = try await off { try $0.syncNow() }
            syncStatus = .synced(at: Date(), report: report)
            return report
        } catch HandoffError.Offline(let reason) {
            syncStatus = .offline(reason: reason, retryInMs: 0)
            throw HandoffError.Offline(reason: reason)
        } catch HandoffError.DeviceRevoked {
            syncStatus = .revoked
            throw HandoffError.DeviceRevoked
        } catch let error as HandoffError {
            // Credentials, member or app version refused: shown as live
            // sync shows it, not left on the last "synced".
            if error.endsSync(), case .RelayRejected(_, let code, let reason) = error {
                syncStatus = .authFailed(code: code, reason: reason)
            }
            throw error
        }
    }

    /// Keep syncing while the app is in the foreground. Its first call
    /// builds the core's sync engine, which reads the store and may wait on
    /// a long merge: off the main actor. The last of start and stop wins:
    /// a start overtaken by a stop (the app went to the background
    /// meanwhile) keeps nothing running.
    public func startLiveSync() async throws {
        liveWanted = true
        guard live == nil, !starting else { return }
        starting = true
        defer { starting = false }
        let listener = Listener(owner: self)
        let handle = try await off { try $0.startSync(listener: listener) }
        if liveWanted && live == nil {
            live = handle
        } else {
            handle.stop()
        }
    }

    public func stopLiveSync() {
        liveWanted = false
        live?.stop()
        live = nil
        if syncStatus != .revoked { syncStatus = .idle }
    }

    fileprivate func hear(_ event: SyncEvent) {
        switch event {
        case .synced(let report): syncStatus = .synced(at: Date(), report: report)
        case .offline(let reason, let retry): syncStatus = .offline(reason: reason, retryInMs: retry)
        // The core's live loop ends after these: a later startLiveSync
        // (after enrolling again, say) starts a new one.
        case .authFailed(let code, let reason): syncStatus = .authFailed(code: code, reason: reason); live = nil
        case .revoked: syncStatus = .revoked; live = nil
        case .catchingUp(let at, let of): syncStatus = .catchingUp(at: at, of: of)
        case .sending(let sent, let of): syncStatus = .sending(sent: sent, of: of)
        case .dataChanged: break
        }
        switch event {
        case .dataChanged, .revoked:
            // A long catch-up changes data page after page: one re-read
            // waiting is enough for all the pages that land meanwhile.
            guard !refreshWaiting else { break }
            refreshWaiting = true
            Task {
                refreshWaiting = false
                try? await refresh()
            }
        default: break
        }
    }
}

/// Called on the core's sync thread: hop to the main actor.
private final class Listener: SyncListener, @unchecked Sendable {
    weak var owner: Handoff?
    init(owner: Handoff) { self.owner = owner }
    func onSyncEvent(event: SyncEvent) {
        Task { @MainActor [weak owner] in owner?.hear(event) }
    }
}

/// Forwards the core's open progress to a closure.
private final class OpenProgress: OpenProgressListener, @unchecked Sendable {
    private let tell: @Sendable (UInt32, UInt32) -> Void
    init(tell: @escaping @Sendable (UInt32, UInt32) -> Void) { self.tell = tell }
    func onProgress(done: UInt32, total: UInt32) { tell(done, total) }
}
