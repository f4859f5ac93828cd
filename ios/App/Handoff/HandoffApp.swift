import BackgroundTasks
import Combine
import Handoff
import SwiftUI

@main
struct HandoffApp: App {
    @StateObject private var session = Session()
    @Environment(\.scenePhase) private var phase

    var body: some Scene {
        WindowGroup {
            RootView().environmentObject(session)
                // Notes and names are patients' details: no text field
                // feeds the keyboard's cache of learned words (kept outside
                // the encrypted store, and past a wipe).
                .autocorrectionDisabled()
                .task { await session.open() }
                // Patient details on screen: the app switcher's picture
                // (kept by the system outside the encrypted store, shown
                // after a wipe) is taken of this cover instead.
                .overlay { if phase != .active { Color(.systemBackground).ignoresSafeArea() } }
        }
        .onChange(of: phase) { phase in
            // Live sync while in the foreground; BGAppRefresh otherwise.
            if phase == .active { Task { try? await session.handoff?.startLiveSync() } }
            if phase == .background { session.handoff?.stopLiveSync(); Session.scheduleRefresh() }
        }
        .backgroundTask(.appRefresh(Session.refreshTask)) {
            await session.open()
            _ = try? await session.handoff?.syncNow()
            Session.scheduleRefresh()
        }
    }
}

/// Owns the one open store; shows the core's own message for any error.
@MainActor
final class Session: ObservableObject {
    nonisolated static let refreshTask = "app.handoff.sync"
    @Published var handoff: Handoff?
    @Published var enrolment: Enrolment?
    @Published var message: String?
    /// How far an open that derives every task again has come (0...1), if it does.
    @Published var updating: Double?
    private var revoked: AnyCancellable?

    func open() async {
        guard handoff == nil else { return }
        await run {
            // In a folder of its own, kept out of backups: a backup taken
            // before a revocation, restored onto the same phone, would
            // bring the store and its key (this device's) back.
            var folder = try FileManager.default
                .url(for: .applicationSupportDirectory, in: .userDomainMask, appropriateFor: nil, create: true)
                .appendingPathComponent("Handoff", isDirectory: true)
            try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
            var noBackup = URLResourceValues()
            noBackup.isExcludedFromBackup = true
            try folder.setResourceValues(noBackup)
            let path = folder.appendingPathComponent("handoff.db").path
            let offset = Int32(TimeZone.current.secondsFromGMT() / 60)
            let handoff = try await Handoff.open(
                path: path, key: try KeyVault.storeKey(), utcOffsetMinutes: offset,
                onProgress: { done, total in
                    let fraction = total == 0 ? 1 : Double(done) / Double(total)
                    Task { @MainActor [weak self] in self?.updating = fraction }
                })
            self.handoff = handoff
            // However the core heard it (live sync, a background refresh,
            // an action): the store is wiped, back to enrolment.
            self.revoked = handoff.$syncStatus
                .filter { $0 == .revoked }
                .sink { [weak self] _ in self?.enrolment = nil }
            self.enrolment = try await handoff.enrolment()
            if self.enrolment != nil { try await handoff.startLiveSync() }
        }
    }

    /// Run an action; a refusal or error becomes the message to show.
    func run(_ action: () async throws -> Void) async {
        do {
            try await action()
        } catch let e as HandoffError {
            if case .DeviceRevoked = e { enrolment = nil }
            message = e.userMessage()
        } catch {
            message = error.localizedDescription
        }
    }

    /// nonisolated: also called from the (non-main-actor) background task.
    nonisolated static func scheduleRefresh() {
        let request = BGAppRefreshTaskRequest(identifier: refreshTask)
        request.earliestBeginDate = Date(timeIntervalSinceNow: 15 * 60)
        try? BGTaskScheduler.shared.submit(request)
    }
}
