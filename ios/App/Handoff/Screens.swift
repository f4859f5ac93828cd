// The screens: enrolment, my queue (with sync status), the shared pool, the
// review inbox, needs attention, the KPI card, and task detail with the SOP
// checklist, call form and history. Layout only: every list and every
// decision comes from the core through `Handoff`.
import Handoff
import SwiftUI

func label<T>(_ value: T) -> String {
    String(describing: value).replacingOccurrences(of: "([a-z])([A-Z])", with: "$1 $2", options: .regularExpression).lowercased()
}

func format(_ millis: Int64?) -> String {
    guard let millis else { return "—" }
    return Date(timeIntervalSince1970: Double(millis) / 1000).formatted(date: .abbreviated, time: .shortened)
}

struct RootView: View {
    @EnvironmentObject var session: Session

    var body: some View {
        Group {
            if let handoff = session.handoff, let me = session.enrolment {
                HomeView(handoff: handoff, me: me)
            } else if session.handoff != nil {
                EnrolView()
            } else if let updating = session.updating {
                // The first open after an update that changed the rules.
                ProgressView("Updating your tasks…", value: updating)
            } else {
                ProgressView()
            }
        }
        .alert(session.message ?? "", isPresented: Binding(get: { session.message != nil }, set: { if !$0 { session.message = nil } })) {
            Button("OK") { session.message = nil }
        }
    }
}

struct EnrolView: View {
    @EnvironmentObject var session: Session
    @State private var relay = "https://"
    @State private var invite = ""

    var body: some View {
        Form {
            Section("Join your practice") {
                TextField("Relay address", text: $relay).textInputAutocapitalization(.never)
                TextField("Invite code", text: $invite).textInputAutocapitalization(.never)
                Button("Join") {
                    Task {
                        await session.run {
                            guard let handoff = session.handoff else { return }
                            session.enrolment = try await handoff.enrol(relayUrl: relay, invite: invite)
                            try await handoff.startLiveSync()
                        }
                    }
                }
            }
        }
    }
}

struct SyncBanner: View {
    let status: SyncStatus
    var body: some View {
        switch status {
        case .idle: Text("Not syncing")
        case .synced(let at, _): Text("Synced \(at.formatted(date: .omitted, time: .shortened))")
        case .catchingUp(let at, let of):
            ProgressView("Catching up with the team…", value: Double(at), total: Double(max(of, 1)))
        case .sending(let sent, let of):
            ProgressView("Sending your work…", value: Double(sent), total: Double(max(of, 1)))
        case .offline: Text("Offline — your work is saved and will sync")
        case .authFailed(_, let reason): Text("Sign-in problem: \(reason)")
        case .revoked: Text("This phone was removed from the team")
        }
    }
}

struct TaskRow: View {
    let task: TaskSummary
    var body: some View {
        VStack(alignment: .leading) {
            Text(task.title).font(.headline)
            Text("\(label(task.status)) · \(label(task.priority)) · next \(format(task.nextDeadlineAt))").font(.caption)
            if !task.escalations.isEmpty {
                Text(task.escalations.map { label($0) }.joined(separator: ", ")).foregroundStyle(.red).font(.caption)
            }
            if task.staleApproval { Text("Approval needs another look").foregroundStyle(.red).font(.caption) }
        }
    }
}

struct HomeView: View {
    @EnvironmentObject var session: Session
    @ObservedObject var handoff: Handoff
    let me: Enrolment

    var body: some View {
        NavigationStack {
            List {
                Section { SyncBanner(status: handoff.syncStatus).font(.caption) }
                if let v = handoff.views {
                    queue("Overdue", v.queue.overdue)
                    queue("Today", v.queue.today)
                    queue("Upcoming", v.queue.upcoming)
                    Section("Shared pool") {
                        ForEach(v.pool, id: \.taskId) { t in
                            HStack {
                                NavigationLink(value: t.taskId) { TaskRow(task: t) }
                                // borderless: otherwise a tap anywhere on the row fires it.
                                Button("Claim") { Task { await session.run { try await handoff.claim(t.taskId) } } }
                                    .buttonStyle(.borderless)
                            }
                        }
                    }
                    Section("Review inbox") {
                        ForEach(v.inbox, id: \.task.taskId) { r in
                            NavigationLink(value: r.task.taskId) {
                                VStack(alignment: .leading) {
                                    TaskRow(task: r.task)
                                    Text("Review by \(format(r.reviewDueAt))").foregroundStyle(r.overdue ? .red : .secondary).font(.caption)
                                }
                            }
                        }
                    }
                    Section("Needs attention") {
                        ForEach(v.attention, id: \.key) { a in
                            VStack(alignment: .leading) {
                                Text(a.title ?? "A task").font(.headline)
                                Text("Your \(a.action.replacingOccurrences(of: "_", with: " ")) did not take effect: \(a.reason)")
                            }
                            .swipeActions { Button("Dismiss") { Task { await session.run { try await handoff.dismissAttention(a.key) } } } }
                        }
                    }
                    KpiCard(handoff: handoff, me: me)
                }
            }
            .refreshable { await session.run { try await handoff.syncNow() } }
            .navigationTitle("Handoff")
            .navigationDestination(for: String.self) { TaskDetailView(handoff: handoff, taskId: $0, me: me) }
        }
    }

    @ViewBuilder private func queue(_ title: String, _ tasks: [TaskSummary]) -> some View {
        if !tasks.isEmpty {
            Section(title) { ForEach(tasks, id: \.taskId) { t in NavigationLink(value: t.taskId) { TaskRow(task: t) } } }
        }
    }
}

struct KpiCard: View {
    @ObservedObject var handoff: Handoff
    let me: Enrolment
    @State private var kpis: OwnerKpis?

    var body: some View {
        Section("Last 7 days") {
            if let k = kpis {
                Text("Done \(k.done) (on time \(k.doneOnTime)) · open \(k.open) · overdue \(k.overdue)")
                Text("Follow-ups reached within policy \(k.reachedWithinPolicy) of \(k.followUps)")
            }
        }
        .task(id: handoff.views) {
            let now = Date()
            kpis = try? await handoff.kpis(from: now.addingTimeInterval(-7 * 86_400), to: now).first { $0.userId == me.userId }
        }
    }
}

struct TaskDetailView: View {
    @EnvironmentObject var session: Session
    @ObservedObject var handoff: Handoff
    let taskId: String
    let me: Enrolment
    @State private var task: TaskDetail?
    @State private var outcome: CallOutcome = .reached
    @State private var notes = ""
    @State private var answers: [String: String] = [:]
    @State private var feedback = ""

    var body: some View {
        Form {
            if let t = task {
                let can = Set(t.availableCommands)
                Section(t.handoff.title) {
                    Text("\(label(t.status)) · due \(format(t.handoff.dueAt))")
                    if let p = t.patient { Text("Patient: \(p.displayName) \(p.phone ?? "")") }
                    Text("Outcome wanted: \(t.handoff.outcome)")
                    Text("Why: \(t.handoff.why)")
                    if can.contains(.claim) { Button("Claim") { act { try await handoff.claim(taskId) } } }
                    if can.contains(.acknowledge) && !t.acknowledged { Button("Acknowledge") { act { try await handoff.acknowledge(taskId) } } }
                }
                if !t.checklist.isEmpty {
                    Section("Checklist") {
                        ForEach(Array(t.checklist.enumerated()), id: \.offset) { i, item in
                            Button { act { try await handoff.tickChecklistItem(taskId, item: UInt32(i)) } } label: {
                                Label(item.text, systemImage: item.doneBy == nil ? "circle" : "checkmark.circle.fill")
                            }
                            .disabled(item.doneBy != nil || !can.contains(.tickChecklistItem))
                        }
                    }
                }
                Section("Calls (\(t.calls.count))") {
                    ForEach(Array(t.calls.enumerated()), id: \.offset) { _, c in Text("\(format(c.at)) \(c.by): \(label(c.outcome)) — \(c.notes)") }
                    if can.contains(.logCall) {
                        Picker("Outcome", selection: $outcome) {
                            ForEach([CallOutcome.reached, .voicemail, .noAnswer, .busy, .notHome, .wrongNumber, .declined, .rescheduled], id: \.self) { Text(label($0)).tag($0) }
                        }
                        ForEach(t.questions, id: \.self) { q in
                            TextField(q, text: Binding(get: { answers[q] ?? "" }, set: { answers[q] = $0 }))
                        }
                        TextField("Notes", text: $notes)
                        Button("Log call") {
                            let attempt = CallAttempt(outcome: outcome, contactUsed: nil, notes: notes,
                                                      answers: t.questions.compactMap { q in answers[q].flatMap { $0.isEmpty ? nil : ScriptAnswer(question: q, answer: $0) } },
                                                      nextAttemptDueAt: nil)
                            act { try await handoff.logCallAttempt(taskId, attempt); notes = ""; answers = [:] }
                        }
                    }
                    if can.contains(.submit) { Button("Submit for review") { act { try await handoff.submit(taskId) } } }
                }
                if can.contains(.approve) || can.contains(.`return`) {
                    Section("Review") {
                        if can.contains(.approve) { Button("Approve") { act { try await handoff.approve(taskId) } } }
                        if can.contains(.`return`) {
                            TextField("Feedback", text: $feedback)
                            Button("Return with feedback") { act { try await handoff.returnWithFeedback(taskId, feedback) } }
                        }
                    }
                }
                Section("History") {
                    ForEach(t.history, id: \.eventId) { h in
                        switch h.outcome {
                        case .applied: Text("\(format(h.at)) \(h.by) \(h.action)")
                        case .refused(_, let reason): Text("\(format(h.at)) \(h.by) \(h.action) — not applied: \(reason)")
                        case .superseded(_, let reason): Text("\(format(h.at)) \(h.by) \(h.action) — superseded: \(reason)")
                        }
                    }
                }
            }
        }
        // Re-read when the data changes; gone (wiped, no longer this
        // phone's to see), the detail leaves the screen.
        .task(id: handoff.views) {
            await session.run {
                do { task = try await handoff.taskDetail(taskId) } catch { task = nil; throw error }
            }
        }
    }

    private func act(_ body: @escaping () async throws -> Void) {
        Task { await session.run { try await body(); task = try await handoff.taskDetail(taskId) } }
    }
}
