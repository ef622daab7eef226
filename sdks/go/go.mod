module github.com/quicproquo/quicproquo/sdks/go

go 1.23
