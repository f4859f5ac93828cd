import BackgroundTasks
import Handoff
import SwiftUI

@main
struct HandoffApp: App {
    @StateObject private var session = Session()
    @Environment(\.scenePhase) private var phase

    var body: some Scene {
        WindowGroup {
            RootView().environmentObject(session)
                .task { await session.open() }
        }
        .onChange(of: phase) { phase in
            // Live sync while in the foreground; BGAppRefresh otherwise.
            if phase == .active { try? session.handoff?.startLiveSync() }
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

    func open() async {
        guard handoff == nil else { return }
        await run {
            let path = try FileManager.default
                .url(for: .applicationSupportDirectory, in: .userDomainMask, appropriateFor: nil, create: true)
                .appendingPathComponent("handoff.db").path
            let offset = Int32(TimeZone.current.secondsFromGMT() / 60)
            let handoff = try await Handoff.open(
                path: path, key: try KeyVault.storeKey(), utcOffsetMinutes: offset,
                onProgress: { done, total in
                    let fraction = total == 0 ? 1 : Double(done) / Double(total)
                    Task { @MainActor [weak self] in self?.updating = fraction }
                })
            self.handoff = handoff
            self.enrolment = try await handoff.enrolment()
            if self.enrolment != nil { try handoff.startLiveSync() }
        }
    }

    /// Run an action; a refusal or error becomes the message to show.
    func run(_ action: () async throws -> Void) async {
        do {
            try await action()
        } catch let e as HandoffError {
            if case .DeviceRevoked = e { KeyVault.forget(); enrolment = nil }
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
