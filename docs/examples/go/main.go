// Publish one request to segmind-queue in the plain form and wait for its result:
// RabbitMQ's RPC convention (the bare request as the body, reply_to and correlation_id as
// properties), nothing but amqp091-go.
//
//	go run . WORKFLOW [INPUTS_JSON] [REQUEST_ID]
//	AMQP_URL, REQUESTS_QUEUE, REPLY_QUEUE and TIMEOUT_S are optional.
//
// Prints the result as JSON; exits 0 when it arrived (whatever its status), 1 if not.
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log"
	"os"
	"strconv"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

func env(name, fallback string) string {
	if value := os.Getenv(name); value != "" {
		return value
	}
	return fallback
}

func arg(index int, fallback string) string {
	if len(os.Args) > index {
		return os.Args[index]
	}
	return fallback
}

func main() {
	url := env("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
	requests := env("REQUESTS_QUEUE", "segmind.requests")
	// A named, durable reply queue: a result waits there even if it outlives this process.
	replyQueue := env("REPLY_QUEUE", fmt.Sprintf("results.go-%d", os.Getpid()))
	timeoutS, err := strconv.Atoi(env("TIMEOUT_S", "3600"))
	if err != nil {
		log.Fatalf("TIMEOUT_S: %v", err)
	}
	random := make([]byte, 16)
	if _, err := rand.Read(random); err != nil {
		log.Fatal(err)
	}
	workflow, inputs, requestID := arg(1, "sketch-maker"), arg(2, "{}"), arg(3, hex.EncodeToString(random))

	connection, err := amqp.Dial(url)
	if err != nil {
		log.Fatalf("connect: %v", err)
	}
	defer connection.Close()
	channel, err := connection.Channel()
	if err != nil {
		log.Fatal(err)
	}
	if _, err := channel.QueueDeclarePassive(requests, true, false, false, false, nil); err != nil {
		log.Fatalf("%s: %v (the worker declares it: start one first)", requests, err)
	}
	if _, err := channel.QueueDeclare(replyQueue, true, false, false, false, nil); err != nil {
		log.Fatal(err)
	}
	results, err := channel.Consume(replyQueue, "", false, false, false, false, nil)
	if err != nil {
		log.Fatal(err)
	}
	if err := channel.Confirm(false); err != nil {
		log.Fatal(err)
	}
	confirms := channel.NotifyPublish(make(chan amqp.Confirmation, 1))

	var inputValues map[string]any
	if err := json.Unmarshal([]byte(inputs), &inputValues); err != nil {
		log.Fatalf("INPUTS_JSON: %v", err)
	}
	body, err := json.Marshal(map[string]any{"workflow": workflow, "inputs": inputValues})
	if err != nil {
		log.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(timeoutS)*time.Second)
	defer cancel()
	err = channel.PublishWithContext(ctx, "", requests, true, false, amqp.Publishing{
		ContentType:   "application/json",
		DeliveryMode:  amqp.Persistent,
		ReplyTo:       replyQueue,
		CorrelationId: requestID, // the request_id: one request is never paid for twice
		Timestamp:     time.Now(),
		Body:          body,
	})
	if err != nil {
		log.Fatal(err)
	}
	if confirmed := <-confirms; !confirmed.Ack { // RabbitMQ has the request, or said no
		log.Fatal("RabbitMQ refused the request")
	}

	for {
		select {
		case message := <-results:
			message.Ack(false)
			if message.Type != "segmind.result" {
				continue // not a final result
			}
			if message.CorrelationId != requestID {
				// This queue is this client's: an earlier run's result. Keep it somewhere real.
				fmt.Fprintf(os.Stderr, "a result for another request: %s\n", message.Body)
				continue
			}
			fmt.Println(string(message.Body))
			return
		case <-ctx.Done():
			fmt.Println("null")
			os.Exit(1)
		}
	}
}
