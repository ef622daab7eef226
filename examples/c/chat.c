/*
 * chat.c: two users chat in a post-quantum group through libqpq.
 *
 *   chat SERVER_ADDR CERT_DER_FILE WORK_DIR
 *
 * Registers alice and bob (stores under WORK_DIR), alice creates a group and invites bob,
 * each sends a message and receives the other's, then everything is freed. Exits 0 when
 * every step did what it should.
 */
#include <qpq.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Fails the program with the error's code, name and message (and frees the error). */
static void check(qpq_error *err, const char *what) {
    if (err == NULL) return;
    fprintf(stderr, "%s failed: %s (%u): %s\n", what, qpq_error_code_name(qpq_error_code(err)),
            (unsigned)qpq_error_code(err), qpq_error_message(err));
    qpq_error_free(err);
    exit(1);
}

static qpq_client *open_client(const char *server, const char *cert, const char *dir, int raw) {
    qpq_config *config = NULL;
    qpq_client *client = NULL;
    check(qpq_config_new(dir, server, &config), "qpq_config_new");
    if (raw) {
        uint8_t key[32];
        for (int i = 0; i < 32; i++) key[i] = (uint8_t)(i * 7 + 1); /* from a keystore, really */
        check(qpq_config_set_raw_key(config, key, sizeof key), "set_raw_key");
    } else {
        check(qpq_config_set_passphrase(config, "a long store passphrase"), "set_passphrase");
    }
    check(qpq_config_set_pinned_cert_file(config, cert), "set_pinned_cert_file");
    check(qpq_client_open(config, &client), "qpq_client_open");
    qpq_config_free(config); /* the client keeps its own copy */
    return client;
}

/* Waits up to 10 s for an event of `kind`; returns it (owned) or exits. */
static qpq_event *wait_for(qpq_client *client, qpq_event_kind kind, const char *text) {
    for (int i = 0; i < 100; i++) {
        qpq_event *event = NULL;
        check(qpq_client_next_event(client, 100, &event), "qpq_client_next_event");
        if (event == NULL) continue;
        if (qpq_event_get_kind(event) == kind) {
            const qpq_message *m = qpq_event_message(event);
            const char *got = qpq_body_text(qpq_message_body(m), NULL);
            if (text == NULL || (got != NULL && strcmp(got, text) == 0)) return event;
        }
        qpq_event_free(event);
    }
    fprintf(stderr, "no event of kind %u within 10 s\n", (unsigned)kind);
    exit(1);
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s SERVER_ADDR CERT_DER_FILE WORK_DIR\n", argv[0]);
        return 2;
    }
    if (qpq_abi_version() >> 16 != QPQ_ABI_VERSION >> 16 || qpq_abi_version() < QPQ_ABI_VERSION) {
        fprintf(stderr, "libqpq %s does not match this header\n", qpq_version());
        return 1;
    }
    char alice_dir[4096], bob_dir[4096];
    snprintf(alice_dir, sizeof alice_dir, "%s/alice", argv[3]);
    snprintf(bob_dir, sizeof bob_dir, "%s/bob", argv[3]);
    qpq_client *alice = open_client(argv[1], argv[2], alice_dir, 0);
    qpq_client *bob = open_client(argv[1], argv[2], bob_dir, 1);

    qpq_account *account = NULL;
    check(qpq_client_register(alice, "alice", "alice's password", &account), "register alice");
    printf("registered %s\n", qpq_account_username(account));
    qpq_account_free(account);
    check(qpq_client_register(bob, "bob", "bob's password", &account), "register bob");
    printf("registered %s\n", qpq_account_username(account));
    qpq_account_free(account);

    qpq_conversation_id group;
    check(qpq_client_create_group(alice, "c-example", true, &group), "create_group");
    const char *invitees[] = {"bob"};
    check(qpq_client_invite(alice, &group, invitees, 1), "invite");
    qpq_event *joined = wait_for(bob, QPQ_EVENT_CONVERSATION_JOINED, NULL);
    const qpq_conversation *conv = qpq_event_conversation(joined);
    printf("bob joined \"%s\" (post-quantum: %d, %s, epoch %llu)\n", qpq_conversation_name(conv),
           qpq_conversation_post_quantum(conv), qpq_conversation_ciphersuite(conv),
           (unsigned long long)qpq_conversation_epoch(conv));
    if (!qpq_conversation_post_quantum(conv) || memcmp(qpq_event_conversation_id(joined).bytes, group.bytes, 16)) {
        fprintf(stderr, "joined the wrong conversation\n");
        return 1;
    }
    qpq_event_free(joined);

    qpq_message_id sent;
    check(qpq_client_send_text(alice, &group, "hello from C \xe2\x9c\x93", &sent), "send_text");
    qpq_event *got = wait_for(bob, QPQ_EVENT_MESSAGE, "hello from C \xe2\x9c\x93");
    const qpq_message *m = qpq_event_message(got);
    printf("bob got \"%s\" from %s\n", qpq_body_text(qpq_message_body(m), NULL), qpq_message_sender(m));
    if (strcmp(qpq_message_sender(m), "alice") != 0 || qpq_message_outgoing(m) ||
        memcmp(qpq_message_get_id(m).bytes, sent.bytes, 16) != 0) {
        fprintf(stderr, "wrong message\n");
        return 1;
    }
    qpq_event_free(got);

    qpq_body *body = NULL;
    static const uint8_t payload[] = {0, 1, 2, 0xff};
    check(qpq_body_new_app("application/x-demo", payload, sizeof payload, &body), "body_new_app");
    check(qpq_client_send(bob, &group, body, &sent), "send");
    qpq_body_free(body);
    for (;;) { /* alice: the app payload, bytes intact */
        qpq_event *e = wait_for(alice, QPQ_EVENT_MESSAGE, NULL);
        const qpq_body *b = qpq_message_body(qpq_event_message(e));
        size_t len = 0;
        const uint8_t *bytes = qpq_body_bytes(b, &len);
        int ok = qpq_body_get_kind(b) == QPQ_BODY_APP && len == sizeof payload && memcmp(bytes, payload, len) == 0;
        qpq_event_free(e);
        if (ok) break;
    }
    printf("alice got bob's %zu-byte payload\n", sizeof payload);

    qpq_member_list *members = NULL;
    check(qpq_client_members(alice, &group, &members), "members");
    for (size_t i = 0; i < qpq_member_list_len(members); i++)
        printf("member %s\n", qpq_member_username(qpq_member_list_get(members, i)));
    qpq_member_list_free(members);

    qpq_message_list *history = NULL;
    check(qpq_client_messages(alice, &group, 50, 0, &history), "messages");
    printf("alice's history holds %zu messages\n", qpq_message_list_len(history));
    qpq_message_list_free(history);

    char *number = NULL;
    check(qpq_client_safety_number(alice, "bob", &number), "safety_number");
    printf("safety number alice-bob: %s\n", number);
    qpq_string_free(number);

    qpq_client_close(alice);
    qpq_client_free(alice);
    qpq_client_free(bob); /* free closes too */
    printf("ok\n");
    return 0;
}
